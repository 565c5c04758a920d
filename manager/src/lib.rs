//! `tm-manager`'s library: the parts of the manager that tests and `tmctl`
//! use directly. The manager itself is issue #5.

pub mod topology;
