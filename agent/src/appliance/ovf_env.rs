//! The OVF environment document (`ovf-env.xml`, DMTF DSP0243): ESXi puts
//! the deployer's answers to the OVF's ProductSection properties on a
//! CD-ROM (the "ISO transport"). Only `PropertySection/Property` with
//! `oe:key` and `oe:value` are read; everything else is ignored.

use super::ApplianceError;
use std::collections::BTreeMap;

type Result<T, E = ApplianceError> = std::result::Result<T, E>;

const OVF_ENV_NS: &str = "http://schemas.dmtf.org/ovf/environment/1";
/// An environment larger than this is refused (it holds a few properties).
const OVF_ENV_BYTES_MAX: usize = 1 << 20;

/// Property key → value, as the deployer set them.
pub fn parse(xml: &str) -> Result<BTreeMap<String, String>> {
    if xml.len() > OVF_ENV_BYTES_MAX {
        return Err(ApplianceError::Invalid(format!(
            "ovf-env.xml is {} bytes, over the {OVF_ENV_BYTES_MAX}-byte limit",
            xml.len()
        )));
    }
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| ApplianceError::Invalid(format!("ovf-env.xml is not well-formed XML: {e}")))?;
    let root = doc.root_element();
    if root.tag_name().name() != "Environment" || root.tag_name().namespace() != Some(OVF_ENV_NS) {
        return Err(ApplianceError::Invalid(format!(
            "ovf-env.xml: the root element is not an OVF Environment ({OVF_ENV_NS})"
        )));
    }
    let mut properties = BTreeMap::new();
    let sections = root.children().filter(|n| n.has_tag_name((OVF_ENV_NS, "PropertySection")));
    for section in sections {
        for p in section.children().filter(|n| n.has_tag_name((OVF_ENV_NS, "Property"))) {
            let key = p
                .attribute((OVF_ENV_NS, "key"))
                .ok_or_else(|| ApplianceError::Invalid("ovf-env.xml: a Property without oe:key".to_string()))?;
            let value = p.attribute((OVF_ENV_NS, "value")).unwrap_or_default();
            if properties.insert(key.to_string(), value.to_string()).is_some() {
                return Err(ApplianceError::Invalid(format!("ovf-env.xml: property {key:?} is set twice")));
            }
        }
    }
    Ok(properties)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const SAMPLE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:ve="http://www.vmware.com/schema/ovfenv" oe:id="">
  <PlatformSection><Kind>VMware ESXi</Kind><Version>8.0.2</Version></PlatformSection>
  <PropertySection>
    <Property oe:key="tidemark.role" oe:value="recovery"/>
    <Property oe:key="tidemark.hostname" oe:value="tm-b &amp; c"/>
  </PropertySection>
  <ve:EthernetAdapterSection><ve:Adapter ve:mac="00:50:56:aa:bb:cc" ve:network="VM Network"/></ve:EthernetAdapterSection>
</Environment>"#;

    #[test]
    fn reads_properties_and_ignores_the_rest() {
        let p = parse(SAMPLE).unwrap();
        assert_eq!(p["tidemark.role"], "recovery");
        assert_eq!(p["tidemark.hostname"], "tm-b & c");
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn refuses_what_is_not_an_environment() {
        assert!(parse("<Environment>").is_err());
        assert!(parse("<Other xmlns=\"http://schemas.dmtf.org/ovf/environment/1\"/>").is_err());
        let twice = SAMPLE.replace("tidemark.hostname", "tidemark.role");
        assert!(parse(&twice).unwrap_err().to_string().contains("set twice"));
    }
}
