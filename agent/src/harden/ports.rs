//! The design's port table, in one place: the firewall refuses to open a
//! port that is not here, and the audit flags any listener that is not here.

/// Who may reach a port; each kind maps to config values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Management,
    Peers,
    Storage,
    Support,
}

impl Source {
    pub fn parse(word: &str) -> Option<Source> {
        match word {
            "management" => Some(Source::Management),
            "peers" => Some(Source::Peers),
            "storage" => Some(Source::Storage),
            "support" => Some(Source::Support),
            _ => None,
        }
    }
}

pub struct PortEntry {
    pub port: u16,
    pub source: Source,
    pub what: &'static str,
}

pub const PORT_TABLE: &[PortEntry] = &[
    PortEntry { port: 22, source: Source::Support, what: "support SSH (opened from the console only)" },
    PortEntry { port: 4005, source: Source::Management, what: "diagnostics bundle" },
    PortEntry { port: 4006, source: Source::Management, what: "management API" },
    PortEntry { port: 4007, source: Source::Peers, what: "replication control" },
    PortEntry { port: 4008, source: Source::Peers, what: "replication data" },
    PortEntry { port: 4009, source: Source::Management, what: "checkpoint coordination" },
    PortEntry { port: 10809, source: Source::Storage, what: "NBD capture exports" },
    PortEntry { port: 3260, source: Source::Storage, what: "iSCSI LUNs (ESXi), mutual CHAP" },
];

pub fn entry(port: u16) -> Option<&'static PortEntry> {
    PORT_TABLE.iter().find(|e| e.port == port)
}
