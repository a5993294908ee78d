//! The appliance's configuration from its OVF properties (first boot).
//! Every `tidemark.*` property is known here; an unknown one (a typo in a
//! deployment script) is refused, as is anything the agent's own config
//! check refuses. Nothing is written unless all of it is valid.
//!
//! Interfaces: management on eth0, replication on eth1 (if its address is
//! given), storage (NBD) on eth2 (if given).

use super::ApplianceError;
use crate::config::{Config, LOG_CAPACITY_BYTES_MIN};
use crate::durable::{replace_file, FileMode};
use crate::io_failure::Doing;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

type Result<T, E = ApplianceError> = std::result::Result<T, E>;

/// One property of the OVF descriptor: what the deploy wizard shows, what
/// it can check before first boot does (`ovf:qualifiers`: `MinLen(n)`,
/// `MaxLen(n)`, `ValueMap{...}`), and whether it is a secret the wizard
/// hides (`ovf:password`). First boot checks the same and more.
pub struct Property {
    pub key: &'static str,
    pub what: &'static str,
    pub qualifiers: &'static str,
    pub password: bool,
}

const fn prop(key: &'static str, what: &'static str) -> Property {
    Property { key, what, qualifiers: "", password: false }
}

const fn checked(key: &'static str, what: &'static str, qualifiers: &'static str) -> Property {
    Property { key, what, qualifiers, password: false }
}

const fn secret(key: &'static str, what: &'static str, qualifiers: &'static str) -> Property {
    Property { key, what, qualifiers, password: true }
}

/// The properties the OVF descriptor declares (`ova/package.sh`). A
/// qualifier cannot say "empty or at least n": the optional CHAP secrets get
/// only their maximum here (first boot checks 12-255 when iSCSI is on); the
/// diagnostics token is required by the wizard (at least 24), though first
/// boot lets an appliance run without the bundle.
pub const PROPERTIES: &[Property] = &[
    checked("tidemark.role", "protected or recovery", r#"ValueMap{"protected","recovery"}"#),
    checked("tidemark.hostname", "host name (default tidemark)", "MaxLen(63)"),
    checked("tidemark.mgmt.address", "management address with prefix, e.g. 192.0.2.10/24 (eth0)", "MinLen(1)"),
    prop("tidemark.mgmt.gateway", "default gateway"),
    prop("tidemark.mgmt.networks", "networks allowed on the management ports, comma separated (default: eth0's)"),
    prop("tidemark.dns", "DNS servers, comma separated"),
    prop("tidemark.ntp", "NTP servers, comma separated"),
    prop("tidemark.repl.address", "replication address with prefix (eth1; default: the management address)"),
    prop(
        "tidemark.storage.address",
        "storage network address with prefix, where the hypervisor reaches NBD and iSCSI (eth2)",
    ),
    checked("tidemark.peer.address", "the peer appliance's replication address", "MinLen(1)"),
    checked(
        "tidemark.peer.fingerprint",
        "the peer appliance's certificate fingerprint, sha256:... (64 hex digits, colons allowed)",
        "MinLen(71),MaxLen(102)",
    ),
    prop("tidemark.vpgs", "protected side: VPGs, as name:volume=/dev/sdX,volume=/dev/sdY;name2:..."),
    prop("tidemark.admin.password_hash", "the first administrator's console password, as a crypt(3) hash"),
    prop("tidemark.admin.ssh_key", "the first administrator's SSH public key (for support sessions)"),
    prop(
        "tidemark.api.admin_password_hash",
        "turns on the management API (4006): its first administrator's password, as an argon2id hash ($argon2id$...)",
    ),
    checked("tidemark.api.admin_user", "that administrator's user name (default admin)", "MaxLen(64)"),
    secret("tidemark.diag.token", "token for the diagnostics bundle on 4005 (at least 24 characters)", "MinLen(24)"),
    prop(
        "tidemark.iscsi.initiators",
        "for ESXi: initiator IQNs allowed on the iSCSI LUNs (protected volumes, or recovered ones), comma separated",
    ),
    prop(
        "tidemark.iscsi.one_way_chap_initiators",
        "of those, the initiators that cannot authenticate the appliance (QEMU's iSCSI driver), allowed one-way CHAP; leave empty for ESXi (comma separated)",
    ),
    checked("tidemark.iscsi.chap_user", "the CHAP user name the initiators present", "MaxLen(255)"),
    secret("tidemark.iscsi.chap_secret", "the CHAP secret the initiators present (12-255 characters)", "MaxLen(255)"),
    checked(
        "tidemark.iscsi.mutual_chap_user",
        "the CHAP user name the appliance presents back (mutual CHAP)",
        "MaxLen(255)",
    ),
    secret(
        "tidemark.iscsi.mutual_chap_secret",
        "the CHAP secret the appliance presents back (12-255, not the initiators')",
        "MaxLen(255)",
    ),
    prop("tidemark.iscsi.domain", "the reversed domain in the target names (default io.tidemark)"),
];

/// The iSCSI portal: the storage address, the port table's port.
const ISCSI_PORT: u16 = crate::config::ISCSI_PORT;

pub const NBD_PORT: u16 = 10809;

/// What first boot writes under `/run/tidemark`.
#[derive(Debug)]
pub struct FirstBootFiles {
    pub config: String,
    /// One line per interface: `name address/prefix [gateway]`.
    pub network: String,
    pub hostname: String,
    pub resolv_conf: String,
    pub shadow: String,
    pub admin_ssh_key: Option<String>,
    pub ntp: String,
    /// The management API's first administrator (name, argon2id hash);
    /// `appliance-config` adds it to the user store if it is not there.
    pub api_admin: Option<(String, String)>,
}

struct Props<'a>(&'a BTreeMap<String, String>);

impl Props<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    fn need(&self, key: &str) -> Result<&str> {
        self.get(key).ok_or_else(|| ApplianceError::Invalid(format!("OVF property {key} is required")))
    }

    fn cidr(&self, key: &str) -> Result<Option<IpNet>> {
        self.get(key)
            .map(|v| {
                v.parse::<IpNet>().map_err(|_| {
                    ApplianceError::Invalid(format!("OVF property {key}: {v:?} is not an address with prefix"))
                })
            })
            .transpose()
    }

    fn list<T: std::str::FromStr>(&self, key: &str) -> Result<Vec<T>> {
        self.get(key)
            .map(|v| {
                v.split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<T>()
                            .map_err(|_| ApplianceError::Invalid(format!("OVF property {key}: {s:?} is not valid")))
                    })
                    .collect()
            })
            .unwrap_or(Ok(Vec::new()))
    }
}

/// `data_dir` is where the data disk is mounted and `data_bytes` its
/// file system's size: the protected log gets three quarters of it.
pub fn render(properties: &BTreeMap<String, String>, data_dir: &Path, data_bytes: u64) -> Result<FirstBootFiles> {
    for key in properties.keys().filter(|k| k.starts_with("tidemark.")) {
        if !PROPERTIES.iter().any(|p| p.key == key) {
            return Err(ApplianceError::Invalid(format!(
                "OVF property {key} is not one of the appliance's properties"
            )));
        }
    }
    let p = Props(properties);
    let role = p.need("tidemark.role")?;
    let hostname = p.get("tidemark.hostname").unwrap_or("tidemark");
    if hostname.len() > 63 || !hostname.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(ApplianceError::Invalid(format!(
            "OVF property tidemark.hostname: {hostname:?} is not a host name"
        )));
    }
    let mgmt = p
        .cidr("tidemark.mgmt.address")?
        .ok_or_else(|| ApplianceError::Invalid("OVF property tidemark.mgmt.address is required".to_string()))?;
    let gateway: Option<IpAddr> = p
        .get("tidemark.mgmt.gateway")
        .map(|g| {
            g.parse().map_err(|_| {
                ApplianceError::Invalid(format!("OVF property tidemark.mgmt.gateway: {g:?} is not an address"))
            })
        })
        .transpose()?;
    let mut mgmt_networks: Vec<IpNet> = p.list("tidemark.mgmt.networks")?;
    if mgmt_networks.is_empty() {
        mgmt_networks.push(mgmt.trunc());
    }
    let dns: Vec<IpAddr> = p.list("tidemark.dns")?;
    let repl = p.cidr("tidemark.repl.address")?;
    let storage = p.cidr("tidemark.storage.address")?;
    let peer = p.need("tidemark.peer.address")?;
    let fingerprint = p.need("tidemark.peer.fingerprint")?;

    let mut network = format!("eth0 {mgmt}{}\n", gateway.map(|g| format!(" {g}")).unwrap_or_default());
    if let Some(r) = repl {
        network.push_str(&format!("eth1 {r}\n"));
    }
    if let Some(s) = storage {
        network.push_str(&format!("eth2 {s}\n"));
    }
    let repl_ip = repl.unwrap_or(mgmt).addr();

    let mut t = toml::Table::new();
    t.insert("role".into(), role.into());
    let keys = data_dir.join("keys");
    t.insert(
        "node".into(),
        toml::Value::Table(toml::toml! {
            name = hostname
            data_dir = (data_dir.display().to_string())
            cert = (keys.join("cert.pem").display().to_string())
            key = (keys.join("key.pem").display().to_string())
        }),
    );
    let mut appliance = toml::Table::new();
    appliance.insert("management_networks".into(), strings(mgmt_networks.iter()));
    let peer_networks: Vec<String> =
        peer.parse::<IpAddr>().map(|ip| vec![IpNet::from(ip).to_string()]).unwrap_or_default();
    appliance.insert("peer_networks".into(), strings(peer_networks.iter()));
    if storage.is_some() {
        appliance.insert("storage_interface".into(), "eth2".into());
    }
    appliance.insert("securetty".into(), "/run/tidemark/securetty".into());
    t.insert("appliance".into(), toml::Value::Table(appliance));
    match role {
        "recovery" => {
            t.insert(
                "listen".into(),
                toml::Value::Table(toml::toml! {
                    address = (repl_ip.to_string())
                    peer_fingerprints = [fingerprint]
                }),
            );
            if let Some(s) = storage {
                t.insert(
                    "exports".into(),
                    toml::Value::Table(
                        toml::toml! { listen = (std::net::SocketAddr::new(s.addr(), NBD_PORT).to_string()) },
                    ),
                );
            }
        }
        "protected" => {
            let s = storage.ok_or_else(|| {
                ApplianceError::Invalid(
                    "OVF property tidemark.storage.address is required on a protected appliance (NBD)".to_string(),
                )
            })?;
            t.insert(
                "capture".into(),
                toml::Value::Table(
                    toml::toml! { listen = (std::net::SocketAddr::new(s.addr(), NBD_PORT).to_string()) },
                ),
            );
            t.insert("peer".into(), toml::Value::Table(toml::toml! { address = peer fingerprint = fingerprint }));
            let groups = vpgs(p.need("tidemark.vpgs")?)?;
            let count = groups.as_array().map_or(1, |a| a.len().max(1)) as u64;
            let log_bytes = i64::try_from(log_capacity(data_bytes, count)?)
                .map_err(|_| ApplianceError::Invalid("the data disk is too large".to_string()))?;
            t.insert("log".into(), toml::Value::Table(toml::toml! { capacity_bytes = log_bytes }));
            t.insert("vpg".into(), groups);
        }
        other => {
            return Err(ApplianceError::Invalid(format!(
                "OVF property tidemark.role: {other:?} must be protected or recovery"
            )))
        }
    }
    if let Some(iscsi) = iscsi_table(&p, storage.map(|s| s.addr()))? {
        t.insert("iscsi".into(), toml::Value::Table(iscsi));
    }
    if let Some(token) = p.get("tidemark.diag.token") {
        t.insert("diag".into(), toml::Value::Table(toml::toml! { token = token }));
    }
    let api_admin = match p.get("tidemark.api.admin_password_hash") {
        Some(hash) => {
            crate::access::users::validate_hash(hash)
                .map_err(|e| e.at("OVF property tidemark.api.admin_password_hash".to_string()))?;
            let name = p.get("tidemark.api.admin_user").unwrap_or("admin");
            crate::config::validate_name("OVF property tidemark.api.admin_user", name)?;
            let listen = std::net::SocketAddr::new(mgmt.addr(), crate::config::API_PORT_DEFAULT).to_string();
            t.insert("api".into(), toml::Value::Table(toml::toml! { listen = listen }));
            Some((name.to_string(), hash.to_string()))
        }
        None if p.get("tidemark.api.admin_user").is_some() => {
            return Err(ApplianceError::Invalid(
                "OVF property tidemark.api.admin_user needs tidemark.api.admin_password_hash".to_string(),
            ))
        }
        None => None,
    };
    let config =
        toml::to_string(&t).map_err(|e| ApplianceError::Invalid(format!("rendering the configuration: {e}")))?;
    Config::parse(&config).map_err(|e| e.at("the OVF properties do not make a valid configuration".to_string()))?;

    let shadow = match p.get("tidemark.admin.password_hash") {
        Some(h) if h.starts_with('$') && !h.contains(':') && !h.contains('\n') => format!("root:{h}:1::::::\n"),
        Some(_) => {
            return Err(ApplianceError::Invalid(
                "OVF property tidemark.admin.password_hash must be a crypt(3) hash such as $6$...".to_string(),
            ))
        }
        None => "root:!:1::::::\n".to_string(),
    };
    // The key as parsed (one line, no options, no comment), never the
    // property's text, which may hold more lines than the key.
    let admin_ssh_key = p
        .get("tidemark.admin.ssh_key")
        .map(|k| crate::harden::ssh_key::SupportKey::parse(k).map(|key| key.plain_line()))
        .transpose()
        .map_err(|e| e.at("OVF property tidemark.admin.ssh_key".to_string()))?;
    let ntp: Vec<String> = p.list("tidemark.ntp")?;
    if let Some(bad) = ntp.iter().find(|server| !is_host_name(server)) {
        return Err(ApplianceError::Invalid(format!(
            "OVF property tidemark.ntp: {bad:?} is not a host name or address"
        )));
    }
    Ok(FirstBootFiles {
        config,
        network,
        hostname: format!("{hostname}\n"),
        resolv_conf: dns.iter().map(|d| format!("nameserver {d}\n")).collect(),
        shadow,
        admin_ssh_key,
        ntp: ntp.join("\n"),
        api_admin,
    })
}

/// A host name or an IP address: what an NTP server may be called, and
/// nothing that could break the line it is written on.
/// The `[iscsi]` table, if the properties name initiators: the portal on
/// the storage address (either role: LUNs of the protected volumes, or of
/// the recovered ones).
fn iscsi_table(p: &Props, storage: Option<IpAddr>) -> Result<Option<toml::Table>> {
    let Some(initiators) = p.get("tidemark.iscsi.initiators") else { return Ok(None) };
    let storage = storage.ok_or_else(|| {
        ApplianceError::Invalid(
            "OVF property tidemark.iscsi.initiators needs tidemark.storage.address (the portal)".to_string(),
        )
    })?;
    let mut iscsi = toml::Table::new();
    iscsi.insert("listen".into(), std::net::SocketAddr::new(storage, ISCSI_PORT).to_string().into());
    iscsi.insert("initiators".into(), names(initiators));
    if let Some(one_way) = p.get("tidemark.iscsi.one_way_chap_initiators") {
        iscsi.insert("one_way_chap_initiators".into(), names(one_way));
    }
    for key in ["chap_user", "chap_secret", "mutual_chap_user", "mutual_chap_secret"] {
        iscsi.insert(key.into(), p.need(&format!("tidemark.iscsi.{key}"))?.into());
    }
    if let Some(domain) = p.get("tidemark.iscsi.domain") {
        iscsi.insert("domain".into(), domain.into());
    }
    Ok(Some(iscsi))
}

/// A comma separated list of names (IQNs) as a TOML array: each trimmed,
/// empty ones (a trailing comma) left out.
fn names(list: &str) -> toml::Value {
    let names: Vec<&str> = list.split(',').map(str::trim).filter(|i| !i.is_empty()).collect();
    strings(names.iter())
}

fn is_host_name(text: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':');
    !text.is_empty() && text.len() <= 253 && text.chars().all(ok) && !text.starts_with('-')
}

/// Each of `vpgs` protected logs' share of the data disk: three quarters
/// of it in all, in whole MiB, leaving the rest for keys, status, logs and
/// the file system. (`capacity_bytes` is each VPG's: three quarters for
/// each would promise the logs more than the disk holds.)
fn log_capacity(data_bytes: u64, vpgs: u64) -> Result<u64> {
    let bytes = (data_bytes / 4 * 3 / vpgs) & !((1 << 20) - 1);
    if bytes < LOG_CAPACITY_BYTES_MIN {
        return Err(ApplianceError::Invalid(format!(
            "the data disk's file system ({} MiB) is too small for {vpgs} protected log(s), each of which needs at least {} MiB: give it at least {} MiB",
            data_bytes >> 20,
            LOG_CAPACITY_BYTES_MIN >> 20,
            (LOG_CAPACITY_BYTES_MIN * vpgs * 4).div_ceil(3 << 20)
        )));
    }
    Ok(bytes)
}

fn strings<'a, T: ToString + 'a>(items: impl Iterator<Item = &'a T>) -> toml::Value {
    toml::Value::Array(items.map(|i| toml::Value::String(i.to_string())).collect())
}

/// `name:volume=/dev/sdb,volume=/dev/sdc;name2:...` → `[[vpg]]` tables.
fn vpgs(spec: &str) -> Result<toml::Value> {
    let mut out = Vec::new();
    for group in spec.split(';').map(str::trim).filter(|g| !g.is_empty()) {
        let (name, volumes) = group
            .split_once(':')
            .ok_or_else(|| ApplianceError::Invalid(format!("tidemark.vpgs: {group:?} lacks name:")))?;
        let mut vols = Vec::new();
        for v in volumes.split(',').map(str::trim) {
            let (vname, path) = v
                .split_once('=')
                .ok_or_else(|| ApplianceError::Invalid(format!("tidemark.vpgs: {v:?} is not volume=/dev/...")))?;
            vols.push(toml::Value::Table(toml::toml! { name = (vname.trim()) path = (path.trim()) }));
        }
        out.push(toml::Value::Table(toml::toml! { name = (name.trim()) volume = vols }));
    }
    Ok(toml::Value::Array(out))
}

/// Writes the files into `dir` (the secrets mode 0600).
pub fn write(files: &FirstBootFiles, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).doing(|| format!("creating {}", dir.display()))?;
    let mut items: Vec<(&str, &str, FileMode)> = vec![
        ("tidemark.toml", &files.config, FileMode::OwnerOnly),
        ("network", &files.network, FileMode::Public),
        ("hostname", &files.hostname, FileMode::Public),
        ("resolv.conf", &files.resolv_conf, FileMode::Public),
        ("shadow", &files.shadow, FileMode::OwnerOnly),
        ("ntp", &files.ntp, FileMode::Public),
    ];
    if let Some(k) = &files.admin_ssh_key {
        items.push(("admin.pub", k, FileMode::Public));
    }
    // Created with their final mode: the shadow file is never readable by
    // others, not even between a write and a chmod.
    for (name, text, mode) in items {
        replace_file(&dir.join(name), text.as_bytes(), mode)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const FP: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn props(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut p: BTreeMap<String, String> = [
            ("tidemark.role", "recovery"),
            ("tidemark.hostname", "tm-b"),
            ("tidemark.mgmt.address", "192.0.2.10/24"),
            ("tidemark.mgmt.gateway", "192.0.2.1"),
            ("tidemark.dns", "192.0.2.53, 192.0.2.54"),
            ("tidemark.repl.address", "198.51.100.10/24"),
            ("tidemark.peer.address", "198.51.100.20"),
            ("tidemark.peer.fingerprint", FP),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            p.insert(k.to_string(), v.to_string());
        }
        p
    }

    #[test]
    fn the_api_and_its_first_admin_come_from_an_argon2id_hash() {
        let hash = crate::access::users::hash_password("first admin password").unwrap();
        let f = render(&props(&[("tidemark.api.admin_password_hash", &hash)]), Path::new("/d"), GIB).unwrap();
        assert_eq!(f.api_admin, Some(("admin".to_string(), hash.clone())));
        let Config::Recovery(r) = Config::parse(&f.config).unwrap() else { panic!("not recovery") };
        assert_eq!(r.system.api.unwrap().listen.to_string(), "192.0.2.10:4006");
        assert!(render(&props(&[]), Path::new("/d"), GIB).unwrap().api_admin.is_none());
        for bad in [
            vec![("tidemark.api.admin_password_hash", "$6$salt$crypt")],
            vec![("tidemark.api.admin_password_hash", hash.as_str()), ("tidemark.api.admin_user", "../root")],
            vec![("tidemark.api.admin_user", "alice")],
        ] {
            assert!(render(&props(&bad), Path::new("/d"), GIB).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn recovery_appliance_from_properties() {
        let f = render(&props(&[]), Path::new("/var/lib/tidemark"), GIB).unwrap();
        let Config::Recovery(r) = Config::parse(&f.config).unwrap() else { panic!("not recovery") };
        assert_eq!(r.listen.address.to_string(), "198.51.100.10");
        assert_eq!(r.system.appliance.management_networks[0].to_string(), "192.0.2.0/24");
        assert_eq!(r.system.appliance.peer_networks[0].to_string(), "198.51.100.20/32");
        assert_eq!(f.network, "eth0 192.0.2.10/24 192.0.2.1\neth1 198.51.100.10/24\n");
        assert_eq!(f.resolv_conf, "nameserver 192.0.2.53\nnameserver 192.0.2.54\n");
        assert_eq!(f.shadow, "root:!:1::::::\n", "root stays locked without a hash");
    }

    #[test]
    fn protected_appliance_needs_storage_and_vpgs() {
        let base = props(&[("tidemark.role", "protected")]);
        assert!(render(&base, Path::new("/d"), GIB).unwrap_err().to_string().contains("storage.address"));
        let f = render(
            &props(&[
                ("tidemark.role", "protected"),
                ("tidemark.storage.address", "10.9.0.5/24"),
                ("tidemark.vpgs", "web:os=/dev/sdb,data=/dev/sdc; db:db0=/dev/sdd"),
                ("tidemark.admin.password_hash", "$6$salt$hash"),
            ]),
            Path::new("/d"),
            GIB,
        )
        .unwrap();
        let Config::Protected(c) = Config::parse(&f.config).unwrap() else { panic!("not protected") };
        assert_eq!(c.capture.listen.to_string(), "10.9.0.5:10809");
        assert_eq!(c.vpgs.len(), 2);
        assert_eq!(c.vpgs[0].volumes[1].path, Path::new("/dev/sdc"));
        assert_eq!(c.system.appliance.storage_interface.as_deref(), Some("eth2"));
        assert_eq!(f.shadow, "root:$6$salt$hash:1::::::\n");
        assert_eq!(c.log.capacity_bytes, 384 << 20, "three quarters of the data disk, for two VPGs");
    }

    #[test]
    fn a_recovery_appliance_serves_iscsi_on_its_storage_address() {
        let iscsi = [
            ("tidemark.role", "recovery"),
            ("tidemark.iscsi.initiators", "iqn.1998-01.com.vmware:esx9"),
            ("tidemark.iscsi.chap_user", "esx"),
            ("tidemark.iscsi.chap_secret", "initiator-secret-1"),
            ("tidemark.iscsi.mutual_chap_user", "tidemark"),
            ("tidemark.iscsi.mutual_chap_secret", "target-secret-12"),
        ];
        let err = render(&props(&iscsi), Path::new("/d"), GIB).unwrap_err();
        assert!(
            crate::error_chain::Chain(&err).to_string().contains("needs tidemark.storage.address"),
            "{err_chain}",
            err_chain = crate::error_chain::Chain(&err)
        );
        let mut with_storage = iscsi.to_vec();
        with_storage.push(("tidemark.storage.address", "10.9.0.6/24"));
        let f = render(&props(&with_storage), Path::new("/d"), GIB).unwrap();
        let config = Config::parse(&f.config).unwrap();
        assert_eq!(config.iscsi().unwrap().listen.to_string(), "10.9.0.6:3260");
        assert!(config.iscsi().unwrap().one_way_chap_initiators.is_empty(), "mutual CHAP for all by default");
        let Config::Recovery(r) = config else { panic!("not recovery") };
        assert_eq!(r.exports.unwrap().listen.to_string(), "10.9.0.6:10809");
        with_storage.push(("tidemark.iscsi.one_way_chap_initiators", " iqn.1998-01.com.vmware:esx9 ,"));
        let config = Config::parse(&render(&props(&with_storage), Path::new("/d"), GIB).unwrap().config).unwrap();
        assert_eq!(config.iscsi().unwrap().one_way_chap_initiators, ["iqn.1998-01.com.vmware:esx9"]);
    }

    #[test]
    fn protected_log_fits_the_data_disk() {
        let p = props(&[
            ("tidemark.role", "protected"),
            ("tidemark.storage.address", "10.9.0.5/24"),
            ("tidemark.vpgs", "web:os=/dev/sdb"),
        ]);
        let f = render(&p, Path::new("/d"), 250 << 20).unwrap();
        let Config::Protected(c) = Config::parse(&f.config).unwrap() else { panic!("not protected") };
        assert_eq!(c.log.capacity_bytes, 187 << 20);
        let err = render(&p, Path::new("/d"), 80 << 20).unwrap_err();
        assert!(
            crate::error_chain::Chain(&err).to_string().contains("data disk's file system (80 MiB) is too small for 1 protected log(s), each of which needs at least 64 MiB: give it at least 86 MiB"),
            "{err_chain}",
            err_chain = crate::error_chain::Chain(&err)
        );
    }

    #[test]
    fn files_hold_only_what_was_checked() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk0S9PzCg0rRx6c4cUzNHp3nJqBzwVw6u3wWk0dXbNf engineer@laptop";
        let f = render(
            &props(&[
                ("tidemark.ntp", "pool.ntp.org, 192.0.2.1"),
                ("tidemark.admin.ssh_key", &format!("# note\n{key}")),
            ]),
            Path::new("/d"),
            GIB,
        )
        .unwrap();
        assert_eq!(f.ntp, "pool.ntp.org\n192.0.2.1");
        let written = f.admin_ssh_key.unwrap();
        assert_eq!(written.lines().count(), 1, "{written:?}");
        assert!(written.starts_with("ssh-ed25519 AAAA") && !written.contains("note"), "{written:?}");
    }

    /// What the wizard checks, first boot checks too: a value one short of
    /// a `MinLen` (or one over a `MaxLen`) is refused, the limit itself is
    /// taken; a `ValueMap` takes its values only.
    #[test]
    fn the_wizard_qualifiers_match_first_boot() {
        let iscsi = [
            ("tidemark.role", "protected"),
            ("tidemark.storage.address", "10.9.0.5/24"),
            ("tidemark.vpgs", "web:os=/dev/sdb"),
            ("tidemark.iscsi.initiators", "iqn.1998-01.com.vmware:esx1"),
            ("tidemark.iscsi.chap_user", "esx"),
            ("tidemark.iscsi.chap_secret", "initiator-secret-1"),
            ("tidemark.iscsi.mutual_chap_user", "tidemark"),
            ("tidemark.iscsi.mutual_chap_secret", "target-secret-12"),
        ];
        let fill = |key: &str, n: usize| -> String {
            match key {
                "tidemark.peer.fingerprint" => format!("sha256:{}", "0".repeat(n.saturating_sub(7))),
                "tidemark.iscsi.mutual_chap_secret" => "m".repeat(n),
                _ => "a".repeat(n),
            }
        };
        let number = |q: &str, name: &str| -> Option<usize> {
            let at = q.find(&format!("{name}("))? + name.len() + 1;
            q[at..].split(')').next()?.parse().ok()
        };
        let mut checked = 0;
        for p in PROPERTIES.iter().filter(|p| !p.qualifiers.is_empty()) {
            let with = |value: String| {
                let mut extra: Vec<(&str, &str)> = iscsi.to_vec();
                extra.push((p.key, value.as_str()));
                render(&props(&extra), Path::new("/d"), GIB)
                    .map(|_| ())
                    .map_err(|e| crate::error_chain::Chain(&e).to_string())
            };
            if let Some(min) = number(p.qualifiers, "MinLen").filter(|&m| m > 1) {
                assert!(with(fill(p.key, min - 1)).is_err(), "{}: {} characters pass first boot", p.key, min - 1);
                assert_eq!(with(fill(p.key, min)), Ok(()), "{}: {min} characters", p.key);
                checked += 1;
            }
            if let Some(max) = number(p.qualifiers, "MaxLen") {
                assert!(with(fill(p.key, max + 1)).is_err(), "{}: {} characters pass first boot", p.key, max + 1);
                checked += 1;
            }
            if let Some(list) = p.qualifiers.strip_prefix("ValueMap{").and_then(|l| l.strip_suffix('}')) {
                for value in list.split(',').map(|v| v.trim_matches('"')) {
                    assert_eq!(with(value.to_string()), Ok(()), "{}={value}", p.key);
                }
                assert!(with("witness".into()).is_err());
                checked += 1;
            }
        }
        assert!(checked >= 8, "only {checked} qualifiers checked");
        for key in ["tidemark.diag.token", "tidemark.iscsi.chap_secret", "tidemark.iscsi.mutual_chap_secret"] {
            assert!(PROPERTIES.iter().any(|p| p.key == key && p.password), "{key} is not hidden in the wizard");
        }
    }

    #[test]
    fn bad_properties_are_named() {
        for (key, value, says) in [
            ("tidemark.role", "witness", "tidemark.role"),
            ("tidemark.mgmt.address", "192.0.2.10", "tidemark.mgmt.address"),
            ("tidemark.peer.fingerprint", "md5:00", "valid configuration"),
            ("tidemark.hostnme", "x", "tidemark.hostnme"),
            ("tidemark.admin.password_hash", "hunter2", "crypt(3)"),
            ("tidemark.admin.ssh_key", "ssh-dss AAAA", "ssh_key"),
            ("tidemark.ntp", "pool.ntp.org\nserver evil.example", "tidemark.ntp"),
            ("tidemark.ntp", "-x", "tidemark.ntp"),
        ] {
            let err = render(&props(&[(key, value)]), Path::new("/d"), GIB).unwrap_err();
            assert!(
                crate::error_chain::Chain(&err).to_string().contains(says),
                "{key}={value}: {err_chain}",
                err_chain = crate::error_chain::Chain(&err)
            );
        }
    }
}
