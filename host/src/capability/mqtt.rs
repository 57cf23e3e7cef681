//! Spin's outbound MQTT (`fermyon:spin/mqtt@2.0.0`): a component opens a session with a
//! broker its `allowed_outbound_hosts` names (`mqtt://host:port`) and publishes with a
//! QoS. A publish returns once the broker has what the QoS promises: written to the
//! connection (at most once), acknowledged (at least once) or completed (exactly
//! once), so an instance that ends right after it loses nothing.
//!
//! Refusals are Spin's: a malformed or disallowed address is `invalid-address`, a
//! broker that cannot be reached or refuses the login is `connection-failed`.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use wasmtime::component::{Linker, Resource};

use super::allowed_hosts::{AllowedHosts, default_port};
use super::{AppContext, Capability, CapabilityView, ComponentContext, InstanceContext, Project, view};
use crate::state::HostState;
use crate::telemetry::{self, Kind, Span, TraceCell};
use bindings::fermyon::spin::mqtt::{self, Error, Qos};
use bindings3::spin::mqtt::mqtt as v3;

/// `fermyon:spin/mqtt@2.0.0` (spin-sdk 5).
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/fermyon-spin",
        world: "fermyon:spin/mqtt-host",
        imports: { default: async },
        with: { "fermyon:spin/mqtt.connection": super::MqttConnection },
    });
}

/// `spin:mqtt@3.0.0` (spin-sdk 7).
mod bindings3 {
    wasmtime::component::bindgen!({
        path: "../wit/spin-mqtt",
        world: "spin:mqtt/host",
        imports: { default: async },
        with: { "spin:mqtt/mqtt.connection": super::MqttConnection },
    });
}

/// Outbound MQTT, `fermyon:spin/mqtt@2.0.0` and `spin:mqtt@3.0.0`.
pub struct Mqtt;

/// Whom a component may publish to.
pub struct MqttGrant {
    component: Arc<str>,
    allowed: Arc<AllowedHosts>,
}

impl Capability for Mqtt {
    type App = ();
    type Component = MqttGrant;
    type Instance = MqttAccess;

    fn configure_app(_: &AppContext<'_>) -> anyhow::Result<()> {
        Ok(())
    }

    fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
        mqtt::add_to_linker::<_, Project<Self>>(linker, view::<Self>)?;
        v3::add_to_linker::<_, Project<Self>>(linker, view::<Self>)?;
        Ok(())
    }

    fn configure(_: &Arc<()>, component: &ComponentContext<'_>) -> anyhow::Result<MqttGrant> {
        Ok(MqttGrant {
            component: component.id.clone(),
            allowed: component.allowed_hosts.clone(),
        })
    }

    fn prepare(grant: &MqttGrant, instance: &InstanceContext) -> MqttAccess {
        MqttAccess {
            component: grant.component.clone(),
            allowed: grant.allowed.clone(),
            trace: instance.trace.clone(),
            open_count: 0,
        }
    }
}

/// Most sessions one instance may hold open at once (`too-many-connections` past it).
const MAX_CONNECTIONS: usize = 16;
/// How long connecting, and each publish, may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// What an instance may reach.
#[derive(Clone)]
pub struct MqttAccess {
    component: Arc<str>,
    allowed: Arc<AllowedHosts>,
    trace: TraceCell,
    open_count: usize,
}

/// An open session as the guest holds it.
pub struct MqttConnection {
    session: Arc<Session>,
}

struct Session {
    client: AsyncClient,
    /// Driven only by this session's own calls (its instance is short-lived).
    events: tokio::sync::Mutex<EventLoop>,
}

/// `mqtt://host[:port][?client_id=id]`: (host, port, client id).
pub fn parse_address(address: &str) -> Option<(String, u16, Option<String>)> {
    let rest = address.strip_prefix("mqtt://")?;
    let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.is_empty() || authority.contains('/') || authority.contains('@') {
        return None;
    }
    let default = default_port("mqtt")?;
    let (host, port) = match authority.strip_prefix('[') {
        // A bracketed IPv6 literal, then an optional port.
        Some(rest) => {
            let (inside, after) = rest.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(port) => port.parse().ok()?,
                None if after.is_empty() => default,
                None => return None,
            };
            (format!("[{inside}]"), port)
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), port.parse().ok()?),
            None => (authority.to_string(), default),
        },
    };
    let client_id = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("client_id="))
        .filter(|id| !id.is_empty())
        .map(str::to_string);
    (!host.is_empty()).then_some((host, port, client_id))
}

fn qos_of(qos: Qos) -> QoS {
    match qos {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
        Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// Whether `event` is what a publish at `qos` waits for.
fn delivered(event: &Event, qos: QoS) -> bool {
    matches!(
        (qos, event),
        (QoS::AtMostOnce, Event::Outgoing(Outgoing::Publish(_)))
            | (QoS::AtLeastOnce, Event::Incoming(Packet::PubAck(_)))
            | (QoS::ExactlyOnce, Event::Incoming(Packet::PubComp(_)))
    )
}

impl MqttAccess {
    async fn open(
        &self,
        address: &str,
        username: &str,
        password: &str,
        keep_alive_secs: u64,
    ) -> Result<MqttConnection, Error> {
        if self.open_count >= MAX_CONNECTIONS {
            return Err(Error::TooManyConnections);
        }
        let Some((host, port, client_id)) = parse_address(address) else {
            return Err(Error::InvalidAddress);
        };
        if !self.allowed.allows("mqtt", &host, Some(port)) {
            let (trace_id, span_id) = telemetry::ids(&self.trace);
            tracing::warn!(
                component = %self.component,
                destination = %format!("mqtt://{host}:{port}"),
                trace_id,
                span_id,
                "outbound mqtt denied: not in allowed_outbound_hosts"
            );
            return Err(Error::InvalidAddress);
        }
        let client_id = client_id.unwrap_or_else(|| format!("shop-{}", uuid::Uuid::new_v4().simple()));
        let mut options = MqttOptions::new(client_id, host.trim_start_matches('[').trim_end_matches(']'), port);
        // rumqttc takes whole seconds of at least 1, or none.
        options.set_keep_alive(Duration::from_secs(keep_alive_secs.clamp(1, u64::from(u16::MAX))));
        if !username.is_empty() {
            options.set_credentials(username, password);
        }
        let (client, mut events) = AsyncClient::new(options, 16);
        let connected = tokio::time::timeout(BROKER_TIMEOUT, async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
                        return Ok(());
                    }
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        return Err(Error::ConnectionFailed(format!(
                            "the broker refused the session: {:?}",
                            ack.code
                        )));
                    }
                    Ok(_) => continue,
                    Err(e) => return Err(Error::ConnectionFailed(e.to_string())),
                }
            }
        })
        .await;
        match connected {
            Ok(Ok(())) => Ok(MqttConnection {
                session: Arc::new(Session {
                    client,
                    events: tokio::sync::Mutex::new(events),
                }),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::ConnectionFailed(format!(
                "no answer from mqtt://{host}:{port} within {BROKER_TIMEOUT:?}"
            ))),
        }
    }
}

impl Session {
    async fn publish(&self, topic: String, payload: Vec<u8>, qos: QoS) -> Result<(), Error> {
        self.client
            .publish(topic, qos, false, payload)
            .await
            .map_err(|e| Error::Other(e.to_string()))?;
        let mut events = self.events.lock().await;
        let sent = tokio::time::timeout(BROKER_TIMEOUT, async {
            loop {
                match events.poll().await {
                    Ok(event) if delivered(&event, qos) => return Ok(()),
                    Ok(_) => continue,
                    Err(e) => return Err(Error::ConnectionFailed(e.to_string())),
                }
            }
        })
        .await;
        sent.unwrap_or_else(|_| {
            Err(Error::ConnectionFailed(format!(
                "the broker did not confirm within {BROKER_TIMEOUT:?}"
            )))
        })
    }
}

/// The producer span of one publish.
fn publish_span(trace: &TraceCell, component: &str, topic: &str) -> Span {
    let mut span = Span::host_call(trace, "", Kind::Producer);
    if span.recording() {
        span.set_name(format!("publish {topic}"));
        span.set("messaging.system", "mqtt");
        span.set("messaging.destination.name", topic.to_string());
        span.set("shop.component", component.to_string());
    }
    span
}

impl mqtt::Host for CapabilityView<'_, Mqtt> {}

impl mqtt::HostConnection for CapabilityView<'_, Mqtt> {
    async fn open(
        &mut self,
        address: String,
        username: String,
        password: String,
        keep_alive_interval_in_secs: u64,
    ) -> Result<Resource<MqttConnection>, Error> {
        let connection = self
            .state
            .open(&address, &username, &password, keep_alive_interval_in_secs)
            .await?;
        self.keep(connection)
    }

    async fn publish(
        &mut self,
        connection: Resource<MqttConnection>,
        topic: String,
        payload: Vec<u8>,
        qos: Qos,
    ) -> Result<(), Error> {
        let span = publish_span(&self.state.trace, &self.state.component, &topic);
        let session = self
            .table
            .get(&connection)
            .map_err(|e| Error::Other(e.to_string()))?
            .session
            .clone();
        telemetry::finish_with(span, session.publish(topic, payload, qos_of(qos)).await)
    }

    async fn drop(&mut self, connection: Resource<MqttConnection>) -> wasmtime::Result<()> {
        self.close(connection)
    }
}

impl CapabilityView<'_, Mqtt> {
    /// Hands an opened session to the guest (both API generations).
    fn keep(&mut self, connection: MqttConnection) -> Result<Resource<MqttConnection>, Error> {
        let resource = self.table.push(connection).map_err(|e| Error::Other(e.to_string()))?;
        self.state.open_count += 1;
        Ok(resource)
    }

    fn close(&mut self, connection: Resource<MqttConnection>) -> wasmtime::Result<()> {
        let connection = self.table.delete(connection)?;
        let _ = connection.session.client.try_disconnect();
        self.state.open_count = self.state.open_count.saturating_sub(1);
        Ok(())
    }
}

/// spin-sdk 7's `spin:mqtt@3.0.0`: the same sessions behind `async func`s, reached
/// through wasmtime's store accessor.
mod v3_impl {
    use wasmtime::component::{Accessor, Resource};

    use super::bindings3::spin::mqtt::mqtt::{self as v3, Error, Qos};
    use super::{Error as E2, Mqtt, MqttConnection, Qos as Q2, qos_of};
    use crate::capability::{CapabilityView, Project};
    use crate::telemetry;

    fn convert(e: E2) -> Error {
        match e {
            E2::InvalidAddress => Error::InvalidAddress,
            E2::TooManyConnections => Error::TooManyConnections,
            E2::ConnectionFailed(m) => Error::ConnectionFailed(m),
            E2::Other(m) => Error::Other(m),
        }
    }

    impl v3::Host for CapabilityView<'_, Mqtt> {}

    impl v3::HostConnection for CapabilityView<'_, Mqtt> {
        async fn drop(&mut self, c: Resource<MqttConnection>) -> wasmtime::Result<()> {
            self.close(c)
        }
    }

    impl<U> v3::HostConnectionWithStore<U> for Project<Mqtt> {
        async fn open(
            store: &Accessor<U, Self>,
            address: String,
            username: String,
            password: String,
            keep_alive_interval_in_secs: u64,
        ) -> Result<Resource<MqttConnection>, Error> {
            let access = store.with(|mut view| view.get().state.clone());
            let connection = access
                .open(&address, &username, &password, keep_alive_interval_in_secs)
                .await
                .map_err(convert)?;
            store.with(|mut view| view.get().keep(connection).map_err(convert))
        }

        async fn publish(
            store: &Accessor<U, Self>,
            c: Resource<MqttConnection>,
            topic: String,
            payload: Vec<u8>,
            qos: Qos,
        ) -> Result<(), Error> {
            let (session, trace, component) = store.with(|mut view| {
                let view = view.get();
                view.table
                    .get(&c)
                    .map(|c| {
                        (
                            c.session.clone(),
                            view.state.trace.clone(),
                            view.state.component.clone(),
                        )
                    })
                    .map_err(|e| Error::Other(e.to_string()))
            })?;
            let span = super::publish_span(&trace, &component, &topic);
            let qos = match qos {
                Qos::AtMostOnce => Q2::AtMostOnce,
                Qos::AtLeastOnce => Q2::AtLeastOnce,
                Qos::ExactlyOnce => Q2::ExactlyOnce,
            };
            telemetry::finish_with(span, session.publish(topic, payload, qos_of(qos)).await).map_err(convert)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_mqtt_urls_with_an_optional_port_and_client_id() {
        assert_eq!(parse_address("mqtt://broker:1884"), Some(("broker".into(), 1884, None)));
        assert_eq!(parse_address("mqtt://broker"), Some(("broker".into(), 1883, None)));
        assert_eq!(
            parse_address("mqtt://10.0.0.1:1883?client_id=shop-1"),
            Some(("10.0.0.1".into(), 1883, Some("shop-1".into())))
        );
        assert_eq!(parse_address("mqtt://[::1]:1884"), Some(("[::1]".into(), 1884, None)));
        assert_eq!(parse_address("mqtt://[::1]"), Some(("[::1]".into(), 1883, None)));
        for bad in [
            "http://broker:1883",
            "mqtt://",
            "mqtt://broker:x",
            "mqtt://user@broker",
            "mqtt://b/path",
            "broker",
        ] {
            assert_eq!(parse_address(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_publish_waits_for_what_its_qos_promises() {
        let written = Event::Outgoing(Outgoing::Publish(0));
        let acked = Event::Incoming(Packet::PubAck(rumqttc::PubAck::new(1)));
        let completed = Event::Incoming(Packet::PubComp(rumqttc::PubComp::new(1)));
        assert!(delivered(&written, QoS::AtMostOnce));
        assert!(!delivered(&written, QoS::AtLeastOnce));
        assert!(delivered(&acked, QoS::AtLeastOnce));
        assert!(!delivered(&acked, QoS::ExactlyOnce));
        assert!(delivered(&completed, QoS::ExactlyOnce));
    }

    #[tokio::test]
    async fn disallowed_or_malformed_addresses_are_refused_before_connecting() {
        let access = MqttAccess {
            component: Arc::from("c"),
            allowed: Arc::new(AllowedHosts::parse(["mqtt://broker.internal:1883"]).unwrap()),
            trace: TraceCell::default(),
            open_count: 0,
        };
        for address in ["mqtt://elsewhere:1883", "mqtt://broker.internal:1884", "not an address"] {
            assert!(
                matches!(access.open(address, "", "", 30).await, Err(Error::InvalidAddress)),
                "{address}"
            );
        }
        let full = MqttAccess {
            open_count: MAX_CONNECTIONS,
            ..access
        };
        assert!(matches!(
            full.open("mqtt://broker.internal:1883", "", "", 30).await,
            Err(Error::TooManyConnections)
        ));
    }
}

#[cfg(test)]
mod capability_tests {
    use super::*;
    use crate::capability::testing::Fixture;
    use mqtt::HostConnection as _;

    #[tokio::test]
    async fn an_instance_reaches_only_granted_brokers() {
        let fixture = Fixture::new("mqtt", "allowed_outbound_hosts = [\"mqtt://broker.internal:1883\"]");
        let mut instance = fixture.instance::<Mqtt>();
        let mut view = instance.view();
        let refused = view
            .open("mqtt://elsewhere:1883".into(), "".into(), "".into(), 30)
            .await;
        assert!(matches!(refused, Err(Error::InvalidAddress)));
        assert_eq!(view.state.open_count, 0);
    }
}
