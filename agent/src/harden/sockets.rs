//! Listening sockets of this network namespace, read from /proc/net, for the
//! audit (every listener must be in the port table) and for support SSH
//! (wait until the server listens).

use super::HardenError;
use crate::io_failure::Doing;
use std::net::IpAddr;

type Result<T, E = HardenError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub proto: &'static str,
    pub address: IpAddr,
    pub port: u16,
}

/// TCP sockets in LISTEN state and bound UDP sockets.
pub fn listeners() -> Result<Vec<Listener>> {
    let mut all = Vec::new();
    for (file, proto, listening_state) in
        [("tcp", "tcp", "0A"), ("tcp6", "tcp", "0A"), ("udp", "udp", "07"), ("udp6", "udp", "07")]
    {
        let path = format!("/proc/net/{file}");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // no IPv6 in this kernel
            Err(e) => return Ok(Err(e).doing(|| format!("reading {path}"))?),
        };
        all.extend(parse_table(&text, proto, listening_state));
    }
    Ok(all)
}

fn parse_table(text: &str, proto: &'static str, listening_state: &str) -> Vec<Listener> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state) = (fields.get(1)?, fields.get(3)?);
            if *state != listening_state {
                return None;
            }
            let (addr_hex, port_hex) = local.split_once(':')?;
            Some(Listener { proto, address: parse_address(addr_hex)?, port: u16::from_str_radix(port_hex, 16).ok()? })
        })
        .collect()
}

/// /proc/net prints addresses as 32-bit words in host (little-endian) order.
fn parse_address(hex: &str) -> Option<IpAddr> {
    let mut bytes = Vec::with_capacity(16);
    for word in 0..hex.len() / 8 {
        let w = u32::from_str_radix(&hex[word * 8..word * 8 + 8], 16).ok()?;
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

pub fn has_tcp(listeners: &[Listener], port: u16) -> bool {
    listeners.iter().any(|l| l.proto == "tcp" && l.port == port)
}

pub fn is_listening_tcp(port: u16) -> bool {
    listeners().is_ok_and(|l| has_tcp(&l, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:0FA5 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n\
   1: 0100007F:0FA5 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n";
        let l = parse_table(text, "tcp", "0A");
        assert_eq!(l, vec![Listener { proto: "tcp", address: "127.0.0.1".parse().unwrap(), port: 4005 }]);
    }

    #[test]
    fn parses_ipv6_any() {
        let text = "header\n   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A x\n";
        let l = parse_table(text, "tcp", "0A");
        assert_eq!(l[0].address, "::".parse::<IpAddr>().unwrap());
        assert_eq!(l[0].port, 22);
    }
}
