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
        let self_link = xml_escape(&format!("https://{}/{}?api-version=2016-07", self.namespace_host, self.path));
        let metadata = self.user_metadata.as_deref().map(|m| format!("<UserMetadata>{}</UserMetadata>", xml_escape(m))).unwrap_or_default();
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

    /// Reads the fields HCM needs back from an entry (element text between tags).
    pub fn parse_atom(xml: &str) -> Option<(bool, Option<String>, usize)> {
        let rca = element_text(xml, "RequiresClientAuthorization")?.trim() == "true";
        let metadata = element_text(xml, "UserMetadata").map(|m| xml_unescape(&m));
        let count = element_text(xml, "ListenerCount")?.trim().parse().ok()?;
        Some((rca, metadata, count))
    }
}

fn element_text(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..end].to_owned())
}

fn xml_unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
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
        let order = ["<CreatedAt>", "<UpdatedAt>", "<RequiresClientAuthorization>", "<UserMetadata>", "<ListenerCount>"];
        let positions: Vec<usize> = order.iter().map(|t| xml.find(t).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{xml}");
        assert!(xml.contains("<CreatedAt>2025-01-01T00:00:00.0000000Z</CreatedAt>"));
        assert!(xml.contains("[{&quot;key&quot;:&quot;endpoint&quot;,&quot;value&quot;:&quot;sqlhost:1433&quot;}]"));
        let (rca, metadata, count) = RuntimeInfo::parse_atom(&xml).unwrap();
        assert_eq!((rca, metadata, count), (true, info.user_metadata.clone(), 1));
    }
}
