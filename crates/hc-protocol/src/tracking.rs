//! Tracking text and timestamps (PROTOCOL.md §9.3).
//!
//! Service text ends with `TrackingId:{id}, SystemTracker:{tracker}, Timestamp:{yyyy-MM-ddTHH:mm:ss}`.
//! `{id}` is the client's `sb-hc-id` (or a generated GUID) plus `_G<n>`; `{tracker}` is
//! `sb://{ns-host}/{entity-path}`. Time is a parameter (Unix seconds), never read here.

/// Gateway role suffix appended to tracking ids, like the real service's `_G<n>`.
pub const GATEWAY_SUFFIX: &str = "_G0";

/// Formats 16 random bytes as a lower-case GUID (version 4 bits set).
pub fn guid_from_bytes(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The tracking id for a client-supplied `sb-hc-id` (any old `_G` suffix replaced) or a
/// generated one.
pub fn tracking_id(client_id: Option<&str>, generated: impl FnOnce() -> String) -> String {
    let base = match client_id.map(str::trim).filter(|s| !s.is_empty()) {
        Some(id) => strip_gateway_suffix(id).to_owned(),
        None => generated(),
    };
    format!("{base}{GATEWAY_SUFFIX}")
}

/// `id` without a trailing `_G<digits>` gateway suffix (what .NET's `RemoveSuffix` drops).
pub fn strip_gateway_suffix(id: &str) -> &str {
    match id.rsplit_once("_G") {
        Some((base, n))
            if !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            base
        }
        _ => id,
    }
}

/// `sb://{ns-host}/{entity-path}`.
pub fn system_tracker(namespace_host: &str, entity_path: &str) -> String {
    format!("sb://{namespace_host}/{entity_path}")
}

/// `{message} TrackingId:{id}, SystemTracker:{tracker}, Timestamp:{time}`.
pub fn with_tracking(
    message: &str,
    tracking_id: &str,
    system_tracker: &str,
    now_unix: u64,
) -> String {
    format!(
        "{message} TrackingId:{tracking_id}, SystemTracker:{system_tracker}, Timestamp:{}",
        timestamp(now_unix)
    )
}

/// `yyyy-MM-ddTHH:mm:ss` in UTC.
pub fn timestamp(unix: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}")
}

/// RFC 3339 with seven fractional digits, as .NET writes `DateTime` (`…T…:…:….0000000Z`).
pub fn dotnet_datetime(unix: u64) -> String {
    format!("{}.0000000Z", timestamp(unix))
}

/// RFC 3339 without fraction (`…Z`), as Atom dates.
pub fn rfc3339(unix: u64) -> String {
    format!("{}Z", timestamp(unix))
}

/// Splits Unix seconds into civil UTC date and time (Howard Hinnant's days-from-civil inverse).
fn civil(unix: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (secs / 3600) as u32,
        (secs % 3600 / 60) as u32,
        (secs % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00");
        assert_eq!(timestamp(1_700_000_000), "2023-11-14T22:13:20");
        assert_eq!(timestamp(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(
            dotnet_datetime(1_735_689_600),
            "2025-01-01T00:00:00.0000000Z"
        );
        assert_eq!(rfc3339(1_735_689_600), "2025-01-01T00:00:00Z");
    }

    #[test]
    fn tracking_text_shape() {
        let id = tracking_id(Some("0b4c_G7"), || unreachable!());
        assert_eq!(id, "0b4c_G0");
        let t = with_tracking(
            "Endpoint does not exist.",
            &id,
            &system_tracker("contoso.localhost", "hyco"),
            1_700_000_000,
        );
        assert_eq!(
            t,
            "Endpoint does not exist. TrackingId:0b4c_G0, SystemTracker:sb://contoso.localhost/hyco, Timestamp:2023-11-14T22:13:20"
        );
        assert_eq!(tracking_id(None, || "gen".into()), "gen_G0");
        assert_eq!(
            tracking_id(Some("my_Great_id"), || unreachable!()),
            "my_Great_id_G0"
        );
        assert_eq!(strip_gateway_suffix("abc_G12"), "abc");
        assert_eq!(strip_gateway_suffix("_G1"), "_G1");
    }

    #[test]
    fn guids() {
        let g = guid_from_bytes([0xff; 16]);
        assert_eq!(g, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(g.len(), 36);
    }
}
