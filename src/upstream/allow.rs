//! The operator's backend allow-list (`--backend-allow CIDR[,CIDR...]`): when set, every
//! backend address (at start, on SIGHUP, and added at run time) must fall inside one of its
//! networks, so a leaked admin token cannot point the gateway anywhere on the network.
//!
//! ```
//! use shardpool::upstream::allow::BackendAllow;
//! let allow: BackendAllow = "10.0.0.0/8, 127.0.0.1/32, fd00::/8".parse().unwrap();
//! assert!(allow.admits("10.1.2.3:7001".parse().unwrap()));
//! assert!(allow.admits("127.0.0.1:7001".parse().unwrap()));
//! assert!(allow.admits("[fd12::1]:7001".parse().unwrap()));
//! assert!(!allow.admits("192.168.1.1:7001".parse().unwrap()));
//! assert!(allow.check("192.168.1.1:7001".parse().unwrap()).unwrap_err().contains("--backend-allow"));
//! ```

use crate::server::BackendAdmin;
use crate::server::proto::Backend;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// One network: an address and a prefix length (`10.0.0.0/8`, `::1/128`; a bare address means
/// that address alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// The bits of `ip` as a 128-bit number, IPv4 addresses in the low 32 bits.
fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The mask of the top `prefix` bits of a `width`-bit address.
fn mask(prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        (u128::MAX << (width - prefix)) & (u128::MAX >> (128 - width))
    }
}

impl Cidr {
    /// Whether `ip` is inside this network. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        let width = match (self.net, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) => 32,
            (IpAddr::V6(_), IpAddr::V6(_)) => 128,
            _ => return false,
        };
        let m = mask(self.prefix, width);
        bits(ip) & m == bits(self.net) & m
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| {
            format!("`{s}` is not a network; write it like 10.0.0.0/8, 127.0.0.1 or fd00::/8")
        })?;
        let width = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= width)
                .ok_or_else(|| {
                    format!("`{s}`: the prefix length must be a number from 0 to {width}")
                })?,
        };
        if bits(net) & !mask(prefix, width) & (u128::MAX >> (128 - width)) != 0 {
            return Err(format!(
                "`{s}` has bits set after the /{prefix} prefix; write the network address \
                 (for example 10.1.0.0/16, not 10.1.2.3/16)"
            ));
        }
        Ok(Cidr { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// A list of networks backend addresses must fall in (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendAllow(Vec<Cidr>);

impl BackendAllow {
    /// The networks.
    pub fn networks(&self) -> &[Cidr] {
        &self.0
    }

    /// Whether `addr`'s IP is inside one of the networks.
    pub fn admits(&self, addr: SocketAddr) -> bool {
        self.0.iter().any(|c| c.contains(addr.ip()))
    }

    /// `Ok` if `addr` is admitted, else why not (naming the list and the knob).
    pub fn check(&self, addr: SocketAddr) -> Result<(), String> {
        if self.admits(addr) {
            return Ok(());
        }
        Err(format!(
            "backend {addr} is outside the backend allow-list [{self}] (--backend-allow, \
             SHARDPOOL_BACKEND_ALLOW, config key upstream.backend_allow)"
        ))
    }
}

impl FromStr for BackendAllow {
    type Err = String;

    /// Comma-separated networks; at least one.
    fn from_str(s: &str) -> Result<BackendAllow, String> {
        let list = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Cidr>, String>>()?;
        if list.is_empty() {
            return Err("the allow-list is empty; give networks like 10.0.0.0/8,127.0.0.1".into());
        }
        Ok(BackendAllow(list))
    }
}

impl fmt::Display for BackendAllow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// A [`BackendAdmin`] hook whose run-time additions must pass an allow-list; everything else
/// is `inner`'s.
pub struct AllowListed<B> {
    inner: B,
    allow: BackendAllow,
}

impl<B: BackendAdmin> AllowListed<B> {
    /// `inner`, admitting only addresses inside `allow`.
    pub fn new(inner: B, allow: BackendAllow) -> AllowListed<B> {
        AllowListed { inner, allow }
    }
}

impl<B: BackendAdmin> BackendAdmin for AllowListed<B> {
    fn add_backend(&self, addr: SocketAddr) -> Result<bool, String> {
        if !self.allow.admits(addr) {
            return Ok(false);
        }
        self.inner.add_backend(addr)
    }

    fn remove_backend(&self, addr: SocketAddr) -> bool {
        self.inner.remove_backend(addr)
    }

    fn list_backends(&self) -> Vec<Backend> {
        self.inner.list_backends()
    }

    fn admit(&self, addr: SocketAddr) -> Result<(), String> {
        self.allow.check(addr)?;
        self.inner.admit(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_networks() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains(ip("10.1.0.0")) && c.contains(ip("10.1.255.255")));
        assert!(!c.contains(ip("10.2.0.0")) && !c.contains(ip("10.0.255.255")));
        let one: Cidr = "192.168.1.7".parse().unwrap();
        assert!(one.contains(ip("192.168.1.7")) && !one.contains(ip("192.168.1.8")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        let c: Cidr = "172.16.0.0/12".parse().unwrap();
        assert!(c.contains(ip("172.31.1.1")) && !c.contains(ip("172.32.0.0")));
        // IPv4-mapped IPv6 is its IPv4 address.
        assert!(c.contains(ip("::ffff:172.20.0.1")));
    }

    #[test]
    fn v6_networks() {
        let c: Cidr = "fd00::/8".parse().unwrap();
        assert!(c.contains(ip("fd12:3456::1")) && !c.contains(ip("fe80::1")));
        assert!(!c.contains(ip("10.0.0.1")));
        let lo: Cidr = "::1/128".parse().unwrap();
        assert!(lo.contains(ip("::1")) && !lo.contains(ip("::2")));
        let all: Cidr = "::/0".parse().unwrap();
        assert!(all.contains(ip("2001:db8::1")));
        let c: Cidr = "2001:db8:abcd::/48".parse().unwrap();
        assert!(c.contains(ip("2001:db8:abcd:ffff::1")) && !c.contains(ip("2001:db8:abce::1")));
    }

    #[test]
    fn bad_networks_say_why() {
        for (bad, why) in [
            ("10.0.0.0/33", "0 to 32"),
            ("::/129", "0 to 128"),
            ("10.0.0.0/x", "prefix length"),
            ("db.internal/8", "is not a network"),
            ("10.1.2.3/16", "network address"),
            ("", "is not a network"),
        ] {
            let e = bad.parse::<Cidr>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(",".parse::<BackendAllow>().unwrap_err().contains("empty"));
        let list: BackendAllow = "10.0.0.0/8, ::1".parse().unwrap();
        assert_eq!(list.to_string(), "10.0.0.0/8,::1/128");
        assert_eq!(list.networks().len(), 2);
    }
}
