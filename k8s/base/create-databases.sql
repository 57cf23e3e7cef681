CREATE DATABASE shop_products;
CREATE DATABASE shop_users;
CREATE DATABASE shop_orders;
CREATE DATABASE shop_inventory;
CREATE DATABASE shop_payments;
CREATE DATABASE shop_notifications;
