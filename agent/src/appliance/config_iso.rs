//! `tidemark config-iso`: the OVF environment on a CD image, for
//! deployments where vSphere does not hand it over itself. vCenter attaches
//! `ovf-env.xml` on a CD-ROM when it deploys the OVA ("ISO transport"); a
//! standalone ESXi host (host client, ovftool without vCenter) does not.
//! There the administrator writes the properties into a file, makes the ISO
//! with this command, and attaches it to the appliance's CD-ROM before
//! first boot. The properties are checked exactly as first boot checks them
//! (`ovf_config::render`), so a wrong one is refused here, not at boot.
//!
//! Properties file: one `tidemark.key = value` per line; blank lines and
//! lines starting with `#` are skipped; a key given twice is refused.

use super::ApplianceError;
use super::{ovf_config, ovf_env};
use crate::io_failure::Doing;
use std::collections::BTreeMap;
use std::path::Path;

type Result<T, E = ApplianceError> = std::result::Result<T, E>;

/// The volume label first boot looks for (`rcS`: `findfs LABEL=...`).
pub const VOLUME_LABEL: &str = "TIDEMARK-CFG";
/// The file first boot reads from the CD.
pub const OVF_ENV_FILE: &str = "ovf-env.xml";
/// The OVA's data disk, for the check of the protected log's size when the
/// caller does not name another one.
pub const OVA_DATA_DISK_BYTES: u64 = 256 << 20;
/// A properties file larger than this is refused (it holds a few lines).
const PROPERTIES_BYTES_MAX: usize = 64 << 10;

/// Reads a properties file's text (see the module comment).
pub fn parse_properties(text: &str) -> Result<BTreeMap<String, String>> {
    if text.len() > PROPERTIES_BYTES_MAX {
        return Err(ApplianceError::Invalid(format!(
            "the properties file is {} bytes, over the {PROPERTIES_BYTES_MAX}-byte limit",
            text.len()
        )));
    }
    // An editor's byte-order mark would stick to the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(ApplianceError::Invalid(format!("line {}: not `key = value`", i + 1)));
        };
        let (key, value) = (key.trim(), value.trim());
        // First boot skips keys that are not the appliance's (the
        // environment may hold others); here a misspelt key is a mistake.
        if !ovf_config::PROPERTIES.iter().any(|p| p.key == key) {
            return Err(ApplianceError::Invalid(format!(
                "line {}: {key:?} is not one of the appliance's properties (`tidemark ovf-properties`)",
                i + 1
            )));
        }
        if value.len() >= 2
            && (value.starts_with('"') && value.ends_with('"') || value.starts_with('\'') && value.ends_with('\''))
        {
            return Err(ApplianceError::Invalid(format!(
                "line {}: {key}: write the value without quotes (they would become part of it)",
                i + 1
            )));
        }
        if out.insert(key.to_string(), value.to_string()).is_some() {
            return Err(ApplianceError::Invalid(format!("line {}: {key} is set twice", i + 1)));
        }
    }
    Ok(out)
}

/// The file system first boot sizes the protected log from, estimated from
/// the data disk's size (ext4's own structures take a few per cent; first
/// boot reads the real figure).
pub fn data_filesystem_bytes(disk_bytes: u64) -> u64 {
    disk_bytes / 100 * FILESYSTEM_SHARE_PERCENT
}
const FILESYSTEM_SHARE_PERCENT: u64 = 90;

/// Writes `image` to `out` readable by its owner only (it holds secrets):
/// into a temporary file beside it, synced, then linked into place, which
/// fails if `out` exists. Nothing is left behind on failure.
pub fn write_new(out: &Path, image: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if out.exists() {
        return Err(ApplianceError::Invalid(format!(
            "{} exists (an existing file is never overwritten)",
            out.display()
        )));
    }
    let name = out
        .file_name()
        .ok_or_else(|| ApplianceError::Invalid("the output needs a file name".to_string()))?
        .to_string_lossy();
    let tmp = out.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .doing(|| format!("creating {}", tmp.display()))?;
        file.write_all(image).doing(|| format!("writing {}", tmp.display()))?;
        file.sync_all().doing(|| format!("syncing {}", tmp.display()))?;
        std::fs::hard_link(&tmp, out).doing(|| format!("creating {}", out.display()))
    })();
    let _ = std::fs::remove_file(&tmp);
    Ok(result?)
}

/// The OVF environment document holding `properties`, as vSphere writes it.
pub fn environment_xml(properties: &BTreeMap<String, String>) -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <Environment xmlns=\"http://schemas.dmtf.org/ovf/environment/1\" \
         xmlns:oe=\"http://schemas.dmtf.org/ovf/environment/1\" oe:id=\"\">\n\
         \x20 <PlatformSection><Kind>tidemark config-iso</Kind></PlatformSection>\n\
         \x20 <PropertySection>\n",
    );
    for (key, value) in properties {
        xml.push_str(&format!("    <Property oe:key=\"{}\" oe:value=\"{}\"/>\n", escape(key), escape(value)));
    }
    xml.push_str("  </PropertySection>\n</Environment>\n");
    xml
}

/// XML attribute text (newlines kept as character references, so an
/// attribute's value survives attribute-value normalisation).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
    out
}

/// Checks `properties` as first boot would, then returns the ISO image
/// holding their environment. `data_disk_bytes` is the data disk the
/// appliance will have (the protected log is sized from it).
pub fn build(properties: &BTreeMap<String, String>, data_disk_bytes: u64) -> Result<Vec<u8>> {
    ovf_config::render(properties, Path::new("/var/lib/tidemark"), data_filesystem_bytes(data_disk_bytes))?;
    let xml = environment_xml(properties);
    // What first boot will read back is what was checked.
    let read_back = ovf_env::parse(&xml).map_err(|e| e.at("the environment written does not parse".to_string()))?;
    assert_eq!(&read_back, properties, "the OVF environment must read back as written");
    image(xml.into_bytes())
}

fn image(ovf_env_xml: Vec<u8>) -> Result<Vec<u8>> {
    use hadris_iso::read::PathSeparator;
    use hadris_iso::write::options::{CreationFeatures, IsoFormatOptions};
    use hadris_iso::write::{File, InputFiles, IsoImageWriter};
    let files = InputFiles {
        path_separator: PathSeparator::ForwardSlash,
        files: vec![File::File { name: std::sync::Arc::new(OVF_ENV_FILE.into()), contents: ovf_env_xml }],
    };
    let options = IsoFormatOptions {
        volume_name: VOLUME_LABEL.into(),
        system_id: None,
        volume_set_id: None,
        publisher_id: None,
        preparer_id: None,
        application_id: Some("TIDEMARK CONFIG-ISO".into()),
        sector_size: 2048,
        path_separator: PathSeparator::ForwardSlash,
        // Rock Ridge and Joliet: the file keeps its lower-case name with a
        // dash on Linux (first boot) and anywhere else it is looked at.
        features: CreationFeatures::extensions(),
        strict_charset: false,
    };
    let mut buffer = std::io::Cursor::new(Vec::new());
    IsoImageWriter::create(&mut buffer, files, options)
        .map_err(|e| ApplianceError::Invalid(format!("writing the ISO image: {e:?}")))?;
    Ok(buffer.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn recovery() -> String {
        format!(
            "# a recovery appliance\ntidemark.role = recovery\ntidemark.mgmt.address=192.0.2.10/24\n\n\
             tidemark.peer.address = 198.51.100.20\ntidemark.peer.fingerprint = {FP}\n\
             tidemark.admin.password_hash = $6$salt$h=a&s<h>\"\n"
        )
    }

    #[test]
    fn properties_round_trip_through_the_environment() {
        let p = parse_properties(&recovery()).unwrap();
        assert_eq!(parse_properties(&format!("\u{feff}{}", recovery())).unwrap(), p, "a byte-order mark is skipped");
        assert_eq!(p["tidemark.role"], "recovery");
        assert_eq!(p["tidemark.admin.password_hash"], "$6$salt$h=a&s<h>\"", "split at the first = only");
        assert_eq!(ovf_env::parse(&environment_xml(&p)).unwrap(), p);
        let image = build(&p, OVA_DATA_DISK_BYTES).unwrap();
        assert_eq!(image.len() % 2048, 0);
        assert_eq!(&image[16 * 2048 + 1..16 * 2048 + 6], b"CD001", "a primary volume descriptor");
        let label = &image[16 * 2048 + 40..16 * 2048 + 40 + VOLUME_LABEL.len()];
        assert_eq!(label, VOLUME_LABEL.as_bytes());
        let at = image.windows(b"oe:key=\"tidemark.role\"".len()).position(|w| w == b"oe:key=\"tidemark.role\"");
        assert!(at.is_some(), "the environment is in the image");
    }

    #[test]
    fn the_image_is_written_once_and_only_for_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("cfg.iso");
        write_new(&out, b"image").unwrap();
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
        let err = write_new(&out, b"other").unwrap_err();
        assert!(
            crate::error_chain::Chain(&err).to_string().contains("never overwritten"),
            "{err_chain}",
            err_chain = crate::error_chain::Chain(&err)
        );
        assert_eq!(std::fs::read(&out).unwrap(), b"image");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn wrong_properties_are_refused_and_named() {
        for (text, says) in [
            ("tidemark.role recovery\n".to_string(), "line 1: not `key = value`"),
            (format!("{}tidemark.role = protected\n", recovery()), "tidemark.role is set twice"),
            (recovery().replace("recovery\n", "witness\n"), "tidemark.role"),
            (recovery().replace("tidemark.peer.address", "tidemark.peer.adress"), "tidemark.peer.adress"),
            (recovery().replace("tidemark.peer.address", "Tidemark.peer.address"), "Tidemark.peer.address"),
            (format!("{}tidemark.iscsi.chap_secret = \"initiator-secret\"\n", recovery()), "without quotes"),
            (format!("{}tidemark.diag.token = short\n", recovery()), "diag.token"),
        ] {
            let err = parse_properties(&text).and_then(|p| build(&p, OVA_DATA_DISK_BYTES)).unwrap_err();
            assert!(
                crate::error_chain::Chain(&err).to_string().contains(says),
                "{text:?}: {err_chain}",
                err_chain = crate::error_chain::Chain(&err)
            );
        }
    }
}
