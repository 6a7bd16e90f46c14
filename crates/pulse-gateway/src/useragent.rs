//! One user-agent classifier for the platform: `woothee`'s categories, a tablet rule woothee
//! lacks, and a bounded cache in front of both (the same few agents repeat millions of times, and
//! a woothee parse costs microseconds of regex work). The profiles domain classifies devices with
//! it; the gateway's user-agent transform (part 2) will too.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

/// What kind of device sent an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    /// A phone.
    Mobile,
    /// A tablet (iPad, Android without `Mobile`, Kindle, …).
    Tablet,
    /// A desktop or laptop browser.
    Desktop,
    /// A crawler, a monitor, a script.
    Bot,
    /// Not told by the agent (or none given).
    Unknown,
}

impl DeviceClass {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Mobile => "mobile",
            DeviceClass::Tablet => "tablet",
            DeviceClass::Desktop => "desktop",
            DeviceClass::Bot => "bot",
            DeviceClass::Unknown => "unknown",
        }
    }
}

/// Longest agent classified; longer ones are `unknown` (no real browser sends more, and the
/// regexes should not run over an attacker's megabyte).
pub const MAX_AGENT_BYTES: usize = 1_024;
/// Agents remembered; when full the cache starts over (cheaper than tracking recency, and the
/// agents that matter are back within a few events).
const CACHE_ENTRIES: usize = 8_192;

fn tablet(agent: &str) -> bool {
    // woothee files iPads and Android tablets under "smartphone"; Android tablets leave
    // `Mobile` out of their agent (Google's documented convention), iPads name themselves.
    agent.contains("iPad")
        || agent.contains("Tablet")
        || agent.contains("Kindle")
        || agent.contains("Silk/")
        || (agent.contains("Android") && !agent.contains("Mobile"))
}

fn classify_uncached(agent: &str) -> DeviceClass {
    static PARSER: OnceLock<woothee::parser::Parser> = OnceLock::new();
    let parsed = PARSER
        .get_or_init(woothee::parser::Parser::new)
        .parse(agent);
    let category = parsed.as_ref().map_or("UNKNOWN", |result| result.category);
    match category {
        "crawler" => DeviceClass::Bot,
        "smartphone" | "mobilephone" if tablet(agent) => DeviceClass::Tablet,
        "smartphone" | "mobilephone" => DeviceClass::Mobile,
        "pc" if agent.contains("iPad") => DeviceClass::Tablet,
        "pc" => DeviceClass::Desktop,
        _ if tablet(agent) => DeviceClass::Tablet,
        _ if looks_scripted(agent) => DeviceClass::Bot,
        _ => DeviceClass::Unknown,
    }
}

/// HTTP libraries and tools woothee does not list as crawlers.
fn looks_scripted(agent: &str) -> bool {
    const TOOLS: &[&str] = &[
        "curl/",
        "Wget/",
        "python-requests",
        "Go-http-client",
        "okhttp",
        "HeadlessChrome",
        "bot",
        "spider",
        "crawl",
    ];
    let lower = agent.to_ascii_lowercase();
    TOOLS
        .iter()
        .any(|tool| lower.contains(&tool.to_ascii_lowercase()))
}

/// The device class of `agent` (`None` or empty: unknown).
pub fn classify(agent: Option<&str>) -> DeviceClass {
    let Some(agent) = agent.map(str::trim).filter(|agent| !agent.is_empty()) else {
        return DeviceClass::Unknown;
    };
    if agent.len() > MAX_AGENT_BYTES {
        return DeviceClass::Unknown;
    }
    static CACHE: OnceLock<Mutex<HashMap<String, DeviceClass>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::with_capacity(1_024)));
    if let Some(class) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(agent) {
        return *class;
    }
    let class = classify_uncached(agent);
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(agent.to_owned(), class);
    class
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_devices_are_told_apart() {
        let cases = [
            ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1", DeviceClass::Mobile),
            ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36", DeviceClass::Mobile),
            ("Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1", DeviceClass::Tablet),
            ("Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36", DeviceClass::Tablet),
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36", DeviceClass::Desktop),
            ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15", DeviceClass::Desktop),
            ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", DeviceClass::Bot),
            ("curl/8.5.0", DeviceClass::Bot),
            ("", DeviceClass::Unknown),
            ("something else entirely", DeviceClass::Unknown),
        ];
        for (agent, expected) in cases {
            assert_eq!(classify(Some(agent)), expected, "{agent}");
            // Twice: the cached answer is the same.
            assert_eq!(classify(Some(agent)), expected, "{agent} (cached)");
        }
        assert_eq!(classify(None), DeviceClass::Unknown);
        assert_eq!(
            classify(Some(&"a".repeat(MAX_AGENT_BYTES + 1))),
            DeviceClass::Unknown
        );
    }
}
