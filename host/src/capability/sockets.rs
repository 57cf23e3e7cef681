//! `wasi:sockets` (TCP and UDP) as Spin grants it: a component may connect to, or send
//! datagrams to, the addresses its `allowed_outbound_hosts` names with the `tcp://` or
//! `udp://` scheme (an IP, a CIDR range, or `*`; `*://*:*` allows every
//! address). Nothing else: no listening, no accepting, no binds to a chosen address
//! (the implicit bind of a connect or send, to the unspecified address, is fine).
//! Everything denied fails in the guest with `access-denied`.
//!
//! The check sees addresses, after any name lookup, so host *names* in these rules
//! never match: write the IP or its range.

use std::net::SocketAddr;
use std::sync::Arc;

use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::sockets::SocketAddrUse;

use super::allowed_hosts::AllowedHosts;

/// Whether `allowed` lets a guest use `address` for `purpose`.
pub fn permitted(allowed: &AllowedHosts, address: SocketAddr, purpose: SocketAddrUse) -> bool {
    let scheme = match purpose {
        SocketAddrUse::TcpConnect => "tcp",
        SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => "udp",
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => return address.ip().is_unspecified(),
        SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => return false,
    };
    let host = match address {
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
    };
    allowed.allows(scheme, &host, Some(address.port()))
}

/// Lets the instance's WASI context use sockets as `allowed` says.
pub fn grant(wasi: &mut WasiCtxBuilder, allowed: &Arc<AllowedHosts>) {
    let allowed = allowed.clone();
    wasi.allow_tcp(true)
        .allow_udp(true)
        .allow_ip_name_lookup(true)
        .socket_addr_check(move |address, purpose| {
            let ok = permitted(&allowed, address, purpose);
            Box::pin(async move { ok })
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(entries.iter().copied()).unwrap()
    }

    fn address(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn connects_follow_the_tcp_and_udp_rules() {
        let allowed = policy(&["tcp://127.0.0.1:6000", "udp://10.0.0.0/8:53", "http://127.0.0.1:80"]);
        assert!(permitted(
            &allowed,
            address("127.0.0.1:6000"),
            SocketAddrUse::TcpConnect
        ));
        assert!(!permitted(
            &allowed,
            address("127.0.0.1:6001"),
            SocketAddrUse::TcpConnect
        ));
        assert!(!permitted(&allowed, address("127.0.0.1:6000"), SocketAddrUse::UdpSend));
        assert!(permitted(&allowed, address("10.9.8.7:53"), SocketAddrUse::UdpSend));
        assert!(permitted(&allowed, address("10.9.8.7:53"), SocketAddrUse::UdpReceive));
        assert!(!permitted(&allowed, address("10.9.8.7:53"), SocketAddrUse::TcpConnect));
        // An http:// rule is for outbound HTTP, not for raw sockets.
        assert!(!permitted(&allowed, address("127.0.0.1:80"), SocketAddrUse::TcpConnect));
        let v6 = policy(&["tcp://[::1]:7000"]);
        assert!(permitted(&v6, address("[::1]:7000"), SocketAddrUse::TcpConnect));
    }

    #[test]
    fn no_listening_and_only_implicit_binds() {
        let allowed = policy(&["*://*:*"]);
        assert!(permitted(&allowed, address("0.0.0.0:0"), SocketAddrUse::TcpBind));
        assert!(permitted(&allowed, address("[::]:0"), SocketAddrUse::UdpBind));
        assert!(!permitted(&allowed, address("127.0.0.1:8080"), SocketAddrUse::TcpBind));
        assert!(!permitted(&allowed, address("0.0.0.0:8080"), SocketAddrUse::TcpListen));
        assert!(!permitted(&allowed, address("1.2.3.4:5"), SocketAddrUse::TcpAccept));
        assert!(permitted(&allowed, address("203.0.113.1:9"), SocketAddrUse::TcpConnect));
        assert!(!permitted(
            &policy(&[]),
            address("127.0.0.1:1"),
            SocketAddrUse::TcpConnect
        ));
    }
}
