//! The data-plane runtime-info GET answer (PROTOCOL.md §10): an Atom entry wrapping a
//! `HybridConnectionDescription`. .NET reads it with `DataContractSerializer`, which is
//! order-sensitive, so members come in the order CreatedAt, UpdatedAt,
//! RequiresClientAuthorization, UserMetadata, ListenerCount.

use crate::tracking::{dotnet_datetime, rfc3339};

/// Content type of the answer.
pub const CONTENT_TYPE: &str = "application/atom+xml;type=entry;charset=utf-8";
/// `api-version` values that mark a GET as a management request (§10).
pub const MANAGEMENT_API_VERSIONS: [&str; 2] = ["2016-07", "2017-04"];

/// What the runtime-info entry says about one hybrid connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// Namespace host as the client addressed it.
    pub namespace_host: String,
    /// Hybrid connection path.
    pub path: String,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// Last update, Unix seconds.
    pub updated_at: u64,
    /// Whether senders need a token.
    pub requires_client_authorization: bool,
    /// Free text; HCM reads the endpoint from it.
    pub user_metadata: Option<String>,
    /// Connected listeners.
    pub listener_count: usize,
}

/// Escapes text for XML element content and attribute values.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

impl RuntimeInfo {
    /// The Atom entry document.
    pub fn to_atom(&self) -> String {
        let self_link = xml_escape(&format!(
            "https://{}/{}?api-version=2016-07",
            self.namespace_host, self.path
        ));
        let metadata = self
            .user_metadata
            .as_deref()
            .map(|m| format!("<UserMetadata>{}</UserMetadata>", xml_escape(m)))
            .unwrap_or_default();
        format!(
            concat!(
                r#"<entry xmlns="http://www.w3.org/2005/Atom"><id>{link}</id><title type="text">{title}</title>"#,
                r#"<published>{created}</published><updated>{updated}</updated><link rel="self" href="{link}"/>"#,
                r#"<content type="application/xml"><HybridConnectionDescription xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect" xmlns:i="http://www.w3.org/2001/XMLSchema-instance">"#,
                r#"<CreatedAt>{created_dn}</CreatedAt><UpdatedAt>{updated_dn}</UpdatedAt><RequiresClientAuthorization>{rca}</RequiresClientAuthorization>{metadata}<ListenerCount>{count}</ListenerCount>"#,
                r#"</HybridConnectionDescription></content></entry>"#
            ),
            link = self_link,
            title = xml_escape(&self.path),
            created = rfc3339(self.created_at),
            updated = rfc3339(self.updated_at),
            created_dn = dotnet_datetime(self.created_at),
            updated_dn = dotnet_datetime(self.updated_at),
            rca = self.requires_client_authorization,
            metadata = metadata,
            count = self.listener_count,
        )
    }

    /// Reads what a client needs from the answer to a runtime-info GET, with an XML parser:
    /// namespace prefixes, attributes, entities and `i:nil` members are all read as .NET's
    /// `DataContractSerializer` would. `None` when the document is not an entry holding a
    /// `HybridConnectionDescription` (the real service answers a feed for unknown paths).
    pub fn parse_atom(xml: &str) -> Option<RuntimeFields> {
        let doc = roxmltree::Document::parse(xml).ok()?;
        let root = doc.root_element();
        if root.tag_name().name() != "entry" || root.tag_name().namespace() != Some(ATOM_NS) {
            return None;
        }
        let desc = root
            .descendants()
            .find(|n| n.has_tag_name((CONNECT_NS, "HybridConnectionDescription")))?;
        let member = |name: &str| desc.children().find(|n| n.has_tag_name((CONNECT_NS, name)));
        let text = |name: &str| {
            member(name)
                .filter(|n| n.attribute((XSI_NS, "nil")) != Some("true"))
                .map(|n| n.text().unwrap_or_default().to_owned())
        };
        Some(RuntimeFields {
            requires_client_authorization: text("RequiresClientAuthorization")?.trim() == "true",
            user_metadata: text("UserMetadata"),
            listener_count: text("ListenerCount")?.trim().parse().ok()?,
        })
    }
}

/// Atom's namespace.
const ATOM_NS: &str = "http://www.w3.org/2005/Atom";
/// The namespace of Service Bus connect descriptions.
const CONNECT_NS: &str = "http://schemas.microsoft.com/netservices/2010/10/servicebus/connect";
/// XML Schema instance (`i:nil`).
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// The members of a runtime-info answer a client acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeFields {
    /// Whether senders need a token.
    pub requires_client_authorization: bool,
    /// `UserMetadata` (HCM reads the endpoint from it).
    pub user_metadata: Option<String>,
    /// Listeners connected now.
    pub listener_count: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_in_datacontract_order() {
        let info = RuntimeInfo {
            namespace_host: "contoso.localhost".into(),
            path: "hyco".into(),
            created_at: 1_735_689_600,
            updated_at: 1_735_689_600,
            requires_client_authorization: true,
            user_metadata: Some(r#"[{"key":"endpoint","value":"sqlhost:1433"}]"#.into()),
            listener_count: 1,
        };
        let xml = info.to_atom();
        let order = [
            "<CreatedAt>",
            "<UpdatedAt>",
            "<RequiresClientAuthorization>",
            "<UserMetadata>",
            "<ListenerCount>",
        ];
        let positions: Vec<usize> = order.iter().map(|t| xml.find(t).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{xml}");
        assert!(xml.contains("<CreatedAt>2025-01-01T00:00:00.0000000Z</CreatedAt>"));
        assert!(xml.contains(
            "[{&quot;key&quot;:&quot;endpoint&quot;,&quot;value&quot;:&quot;sqlhost:1433&quot;}]"
        ));
        let fields = RuntimeInfo::parse_atom(&xml).unwrap();
        assert_eq!(
            fields,
            RuntimeFields {
                requires_client_authorization: true,
                user_metadata: info.user_metadata.clone(),
                listener_count: 1
            }
        );
    }

    /// How another server may write the same entry: prefixes, attributes, entities, CDATA,
    /// `i:nil`, whitespace, members out of our order.
    #[test]
    fn prefixes_attributes_and_nil_do_not_break_parsing() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<a:entry xmlns:a="http://www.w3.org/2005/Atom" a:lang="en"><a:id>x</a:id>
  <a:content type="application/xml">
    <sb:HybridConnectionDescription xmlns:sb="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect" xmlns:i="http://www.w3.org/2001/XMLSchema-instance" i:type="HybridConnectionDescription">
      <sb:ListenerCount> 3 </sb:ListenerCount>
      <sb:UserMetadata><![CDATA[[{"key":"endpoint","value":"db:5432"}]]]></sb:UserMetadata>
      <sb:RequiresClientAuthorization>false</sb:RequiresClientAuthorization>
    </sb:HybridConnectionDescription>
  </a:content></a:entry>"#;
        let f = RuntimeInfo::parse_atom(xml).unwrap();
        assert_eq!(
            (
                f.requires_client_authorization,
                f.user_metadata.as_deref(),
                f.listener_count
            ),
            (false, Some(r#"[{"key":"endpoint","value":"db:5432"}]"#), 3)
        );
        let nil = xml.replace(
            r#"<sb:UserMetadata><![CDATA[[{"key":"endpoint","value":"db:5432"}]]]></sb:UserMetadata>"#,
            r#"<sb:UserMetadata i:nil="true"/>"#,
        );
        assert_eq!(RuntimeInfo::parse_atom(&nil).unwrap().user_metadata, None);
        // A feed (what the service answers for unknown paths), another namespace, or junk.
        assert!(
            RuntimeInfo::parse_atom(
                r#"<feed xmlns="http://www.w3.org/2005/Atom"><title>x</title></feed>"#
            )
            .is_none()
        );
        assert!(RuntimeInfo::parse_atom(&xml.replace("servicebus/connect", "elsewhere")).is_none());
        assert!(RuntimeInfo::parse_atom("<entry").is_none());
    }
}
