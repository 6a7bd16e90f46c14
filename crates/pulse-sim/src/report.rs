//! What the simulator saw: counters and latencies per request kind, failures by cause, live
//! progress on the terminal, and the closing summary (text or JSON).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::city::Position;
use crate::SimSettings;

/// Failure messages kept as examples.
const ERROR_SAMPLES: usize = 5;
/// Cells shown as the hottest.
const HOTTEST: usize = 5;

/// The kinds of request the city sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A rider's quote before ordering.
    Quote,
    /// An order.
    Order,
    /// A driver location.
    Ping,
    /// A driver's move of its ride (`STARTED`, `FINISHED`).
    Move,
    /// A rider's wallet top-up, before its first order.
    TopUp,
    /// The rider app's analytics (a Segment batch of page views, identify, track).
    Analytics,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Quote,
        Kind::Order,
        Kind::Ping,
        Kind::Move,
        Kind::TopUp,
        Kind::Analytics,
    ];

    fn index(self) -> usize {
        match self {
            Kind::Quote => 0,
            Kind::Order => 1,
            Kind::Ping => 2,
            Kind::Move => 3,
            Kind::TopUp => 4,
            Kind::Analytics => 5,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Quote => "quotes",
            Kind::Order => "orders",
            Kind::Ping => "pings",
            Kind::Move => "moves",
            Kind::TopUp => "top-ups",
            Kind::Analytics => "events",
        }
    }
}

/// What became of the city's orders as rides.
#[derive(Debug, Clone, Default)]
struct RideStats {
    matched: u64,
    no_driver: u64,
    started: u64,
    finished: u64,
    /// Placement to match, as Pulse recorded them (the order's history), microseconds.
    match_us: Vec<u32>,
}

#[derive(Debug, Clone, Default)]
struct KindStats {
    sent: u64,
    succeeded: u64,
    failed: u64,
    latencies_us: Vec<u32>,
    window_us: Vec<u32>,
}

/// Latency samples kept per kind for the summary: beyond this, a uniform sample of the run
/// (reservoir sampling) keeps memory flat however long `pulse demo` runs.
const MAX_SAMPLES: usize = 200_000;

impl KindStats {
    fn record(&mut self, latency: Duration, ok: bool) {
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.sent += 1;
        if ok {
            self.succeeded += 1;
        } else {
            self.failed += 1;
        }
        if self.latencies_us.len() < MAX_SAMPLES {
            self.latencies_us.push(micros);
        } else {
            let slot = fastrand::u64(0..self.sent) as usize;
            if slot < MAX_SAMPLES {
                self.latencies_us[slot] = micros;
            }
        }
        self.window_us.push(micros);
    }
}

/// Everything recorded so far.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    kinds: [KindStats; Kind::ALL.len()],
    rides: RideStats,
    errors: BTreeMap<String, u64>,
    error_samples: Vec<String>,
}

/// One kind's counters now (sent, succeeded, failed) and latency since the previous report.
#[derive(Debug, Clone, Copy, PartialEq)]
struct KindWindow {
    counts: (u64, u64, u64),
    latency: Latency,
}

/// Counters now and latencies since the previous progress report.
#[derive(Debug, Clone)]
pub struct Window {
    kinds: [KindWindow; Kind::ALL.len()],
    rides: (u64, u64, u64),
    errors: BTreeMap<String, u64>,
}

impl Stats {
    fn kind(&mut self, kind: Kind) -> &mut KindStats {
        &mut self.kinds[kind.index()]
    }

    /// A request that succeeded.
    pub fn record_success(&mut self, kind: Kind, latency: Duration) {
        self.kind(kind).record(latency, true);
    }

    /// A request that failed, with its cause (`HTTP 503`, `timeout`, …) and details.
    pub fn record_failure(&mut self, kind: Kind, latency: Duration, cause: String, detail: String) {
        self.kind(kind).record(latency, false);
        if self.error_samples.len() < ERROR_SAMPLES {
            self.error_samples
                .push(format!("{}: {cause}: {}", kind.name(), detail.trim()));
        }
        *self.errors.entry(cause).or_default() += 1;
    }

    /// An order Pulse matched, `latency` after its placement.
    pub fn record_match(&mut self, latency: Duration) {
        self.rides.matched += 1;
        if self.rides.match_us.len() < MAX_SAMPLES {
            self.rides
                .match_us
                .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        }
    }

    /// An order Pulse gave up matching (`no_driver`).
    pub fn record_no_driver(&mut self) {
        self.rides.no_driver += 1;
    }

    /// A ride its driver started (`true`) or finished (`false`).
    pub fn record_move(&mut self, started: bool) {
        if started {
            self.rides.started += 1;
        } else {
            self.rides.finished += 1;
        }
    }

    /// The counters, and the latencies since the last call (which starts a new window).
    pub fn take_window(&mut self) -> Window {
        let kinds = self.kinds.each_mut().map(|stats| {
            let window = KindWindow {
                counts: (stats.sent, stats.succeeded, stats.failed),
                latency: Latency::of(&mut stats.window_us),
            };
            stats.window_us.clear();
            window
        });
        Window {
            kinds,
            rides: (
                self.rides.matched,
                self.rides.finished,
                self.rides.no_driver,
            ),
            errors: self.errors.clone(),
        }
    }
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

impl Latency {
    fn of(samples: &mut [u32]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let index = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            f64::from(samples[index]) / 1_000.0
        };
        Self {
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// One kind of request over the whole run.
#[derive(Debug, Clone, Serialize)]
pub struct KindSummary {
    /// Requests sent.
    pub sent: u64,
    /// Answered with a 2xx.
    pub succeeded: u64,
    /// Answered otherwise, or not at all.
    pub failed: u64,
    /// Sent per second, achieved.
    pub per_second: f64,
    /// Latency of every request, milliseconds.
    pub latency_ms: Latency,
}

/// The city's orders as rides.
#[derive(Debug, Clone, Serialize)]
pub struct RideSummary {
    /// Orders Pulse matched to a driver.
    pub matched: u64,
    /// Rides their driver started.
    pub started: u64,
    /// Rides their driver finished.
    pub finished: u64,
    /// Orders Pulse gave up on (`no_driver`).
    pub no_driver: u64,
    /// Placement to match, as Pulse recorded them, milliseconds.
    pub match_latency_ms: Latency,
    /// The drivers' `STARTED` and `FINISHED` requests.
    pub moves: KindSummary,
}

/// A cell with a live surge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HotCell {
    /// H3 cell.
    pub h3: String,
    /// Multiplier.
    pub multiplier: f64,
    /// Orders in the window.
    pub demand: u64,
    /// Available drivers in the window.
    pub supply: u64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The Pulse driven.
    pub target: String,
    /// The seed (rerun with `--seed` to send the same requests).
    pub seed: u64,
    /// The city box, `south,west,north,east`.
    pub city: String,
    /// Seconds the run lasted.
    pub duration_secs: f64,
    /// Drivers simulated.
    pub drivers: usize,
    /// Riders simulated.
    pub riders: usize,
    /// Quotes riders asked for before ordering.
    pub quotes: KindSummary,
    /// Orders (placed with the quote's id when the quote had one).
    pub orders: KindSummary,
    /// Driver locations.
    pub pings: KindSummary,
    /// Orders as rides: matched, started, finished, `no_driver`, and how fast they were matched.
    pub rides: RideSummary,
    /// Riders' wallets topped up (each once, before its first order).
    pub top_ups: KindSummary,
    /// The rider app's analytics batches (Segment's `/v1/batch`), which fill the profiles.
    pub analytics: KindSummary,
    /// The tenant's ledger at the end (all runs so far): money moved, the platform's revenue.
    pub ledger: Option<LedgerSummary>,
    /// Failed requests by cause.
    pub errors: BTreeMap<String, u64>,
    /// A few failures in full.
    pub error_samples: Vec<String>,
    /// Where the demand hotspots ended up, `[lat, lng]`.
    pub hotspots: Vec<[f64; 2]>,
    /// The highest surges Pulse showed at the end (empty when its map did not answer).
    pub hottest_cells: Vec<HotCell>,
    /// Cells with a live surge at the end.
    pub live_cells: u64,
}

/// The tenant's ledger totals (`GET /api/v1/ledger/totals`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LedgerSummary {
    /// ISO 4217.
    pub currency: String,
    /// Paid into riders' wallets.
    pub topped_up_minor: i64,
    /// Fares charged (posted holds).
    pub charged_minor: i64,
    /// Rides charged.
    pub rides_charged: i64,
    /// The platform's commission.
    pub revenue_minor: i64,
    /// What drivers earned.
    pub drivers_minor: i64,
    /// Held by matched rides not yet paid.
    pub held_minor: i64,
}

/// The hottest cells of a `/api/v1/surge/cells` answer.
fn hottest(cells: Option<&Value>) -> Vec<HotCell> {
    let mut hot: Vec<HotCell> = cells
        .and_then(|snapshot| snapshot["cells"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|cell| {
            Some(HotCell {
                h3: cell["h3"].as_str()?.to_owned(),
                multiplier: cell["multiplier"].as_f64()?,
                demand: cell["demand"].as_u64()?,
                supply: cell["supply"].as_u64()?,
            })
        })
        .collect();
    hot.sort_by(|a, b| {
        b.multiplier
            .total_cmp(&a.multiplier)
            .then(b.demand.cmp(&a.demand))
    });
    hot.truncate(HOTTEST);
    hot
}

impl Summary {
    pub(crate) fn new(
        settings: &SimSettings,
        elapsed: Duration,
        stats: &Stats,
        hotspots: Vec<Position>,
        cells: Option<&Value>,
        ledger: Option<LedgerSummary>,
    ) -> Self {
        let seconds = elapsed.as_secs_f64().max(f64::EPSILON);
        let kind = |stats: &KindStats| KindSummary {
            sent: stats.sent,
            succeeded: stats.succeeded,
            failed: stats.failed,
            per_second: (stats.sent as f64 / seconds * 10.0).round() / 10.0,
            latency_ms: Latency::of(&mut stats.latencies_us.clone()),
        };
        Self {
            target: settings.target.clone(),
            seed: settings.seed,
            city: settings.city.to_string(),
            duration_secs: (seconds * 10.0).round() / 10.0,
            drivers: settings.drivers,
            riders: settings.riders,
            quotes: kind(&stats.kinds[Kind::Quote.index()]),
            orders: kind(&stats.kinds[Kind::Order.index()]),
            pings: kind(&stats.kinds[Kind::Ping.index()]),
            rides: RideSummary {
                matched: stats.rides.matched,
                started: stats.rides.started,
                finished: stats.rides.finished,
                no_driver: stats.rides.no_driver,
                match_latency_ms: Latency::of(&mut stats.rides.match_us.clone()),
                moves: kind(&stats.kinds[Kind::Move.index()]),
            },
            top_ups: kind(&stats.kinds[Kind::TopUp.index()]),
            analytics: kind(&stats.kinds[Kind::Analytics.index()]),
            ledger,
            errors: stats.errors.clone(),
            error_samples: stats.error_samples.clone(),
            hotspots: hotspots.iter().map(|p| [p.lat, p.lng]).collect(),
            hottest_cells: hottest(cells),
            live_cells: cells
                .and_then(|snapshot| snapshot["totals"]["cells"].as_u64())
                .unwrap_or(0),
        }
    }
}

fn kind_line(f: &mut fmt::Formatter<'_>, name: &str, kind: &KindSummary) -> fmt::Result {
    writeln!(
        f,
        "  {name:<7}{:>9} sent {:>9} ok {:>7} failed {:>8.1}/s   p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        kind.sent,
        kind.succeeded,
        kind.failed,
        kind.per_second,
        kind.latency_ms.p50,
        kind.latency_ms.p99,
        kind.latency_ms.max
    )
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Simulated {} drivers and {} riders for {:.1} s against {} (seed {})",
            self.drivers, self.riders, self.duration_secs, self.target, self.seed
        )?;
        kind_line(f, "quotes", &self.quotes)?;
        kind_line(f, "orders", &self.orders)?;
        kind_line(f, "pings", &self.pings)?;
        kind_line(f, "moves", &self.rides.moves)?;
        let rides = &self.rides;
        writeln!(
            f,
            "  rides  {:>9} matched {:>6} started {:>6} finished {:>6} no_driver   match p50 {:.1} ms  p99 {:.1} ms",
            rides.matched,
            rides.started,
            rides.finished,
            rides.no_driver,
            rides.match_latency_ms.p50,
            rides.match_latency_ms.p99
        )?;
        kind_line(f, "top-ups", &self.top_ups)?;
        kind_line(f, "events", &self.analytics)?;
        if let Some(ledger) = &self.ledger {
            let money = |minor: i64| format!("{:.2} {}", minor as f64 / 100.0, ledger.currency);
            writeln!(
                f,
                "  money    {} topped up, {} charged for {} rides, {} to drivers, {} platform revenue, {} held",
                money(ledger.topped_up_minor),
                money(ledger.charged_minor),
                ledger.rides_charged,
                money(ledger.drivers_minor),
                money(ledger.revenue_minor),
                money(ledger.held_minor),
            )?;
        }
        if self.errors.is_empty() {
            writeln!(f, "  errors   none")?;
        } else {
            let causes: Vec<String> = self
                .errors
                .iter()
                .map(|(cause, count)| format!("{cause} ×{count}"))
                .collect();
            writeln!(f, "  errors   {}", causes.join(", "))?;
            for sample in &self.error_samples {
                writeln!(f, "           e.g. {sample}")?;
            }
        }
        writeln!(f, "  surge    {} live cells; hottest:", self.live_cells)?;
        for cell in &self.hottest_cells {
            writeln!(
                f,
                "           {}  ×{:.2}  (demand {}, supply {})",
                cell.h3, cell.multiplier, cell.demand, cell.supply
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Redrawn in place every second (stderr is a terminal).
    Live,
    /// One line every few seconds (stderr is a file or a pipe).
    Lines,
    /// Nothing.
    Quiet,
}

/// Progress output on stderr.
#[derive(Debug)]
pub struct Progress {
    mode: Mode,
    drawn: usize,
    last: Option<(Duration, [u64; Kind::ALL.len()])>,
}

impl Progress {
    /// Live on a terminal, a line every few seconds otherwise.
    pub fn stderr() -> Self {
        let mode = if std::io::stderr().is_terminal() {
            Mode::Live
        } else {
            Mode::Lines
        };
        Self {
            mode,
            drawn: 0,
            last: None,
        }
    }

    /// No progress output.
    pub fn quiet() -> Self {
        Self {
            mode: Mode::Quiet,
            drawn: 0,
            last: None,
        }
    }

    pub(crate) fn every(&self) -> Duration {
        match self.mode {
            Mode::Live => Duration::from_secs(1),
            Mode::Lines | Mode::Quiet => Duration::from_secs(5),
        }
    }

    pub(crate) fn report(&mut self, elapsed: Duration, window: &Window, cells: Option<&Value>) {
        if self.mode == Mode::Quiet {
            return;
        }
        let sent = window.kinds.map(|kind| kind.counts.0);
        let rates = match self.last {
            Some((at, last)) => {
                let seconds = (elapsed - at).as_secs_f64().max(f64::EPSILON);
                std::array::from_fn(|i| (sent[i] - last[i]) as f64 / seconds)
            }
            None => [0.0; Kind::ALL.len()],
        };
        self.last = Some((elapsed, sent));
        let clock = format!(
            "{:02}:{:02}",
            elapsed.as_secs() / 60,
            elapsed.as_secs() % 60
        );
        let kind_lines = Kind::ALL.map(|kind| {
            let KindWindow { counts: (sent, ok, failed), latency } = window.kinds[kind.index()];
            let (name, rate) = (kind.name(), rates[kind.index()]);
            format!(
                "  {name:<7}{sent:>9} sent {ok:>9} ok {failed:>7} failed {rate:>8.1}/s   p50 {:.1} ms  p99 {:.1} ms",
                latency.p50, latency.p99
            )
        });
        let errors = if window.errors.is_empty() {
            "none".to_owned()
        } else {
            window
                .errors
                .iter()
                .map(|(cause, count)| format!("{cause} ×{count}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let hot: Vec<String> = hottest(cells)
            .iter()
            .take(3)
            .map(|cell| format!("{} ×{:.2}", cell.h3, cell.multiplier))
            .collect();
        let [quotes_line, orders_line, pings_line, moves_line, top_ups_line, analytics_line] =
            kind_lines;
        let (matched, finished, no_driver) = window.rides;
        let lines = [
            format!("pulse simulate  {clock}"),
            quotes_line,
            orders_line,
            pings_line,
            moves_line,
            top_ups_line,
            analytics_line,
            format!(
                "  rides  {matched:>9} matched {finished:>9} finished {no_driver:>7} no_driver"
            ),
            format!("  errors   {errors}"),
            format!(
                "  hottest  {}",
                if hot.is_empty() {
                    "(no surge yet)".to_owned()
                } else {
                    hot.join("  ")
                }
            ),
        ];
        let mut err = std::io::stderr().lock();
        // Progress is best effort: a closed stderr must not stop the simulation.
        let _ = match self.mode {
            Mode::Live => {
                if self.drawn > 0 {
                    let _ = write!(err, "\x1b[{}A", self.drawn);
                }
                self.drawn = lines.len();
                lines
                    .iter()
                    .try_for_each(|line| writeln!(err, "\x1b[2K{line}"))
            }
            Mode::Lines => {
                let counts: Vec<String> = Kind::ALL
                    .iter()
                    .map(|kind| {
                        let (sent, _, failed) = window.kinds[kind.index()].counts;
                        format!("{} {sent} ({failed} failed)", kind.name())
                    })
                    .collect();
                writeln!(
                    err,
                    "[{clock}] {}  rides {matched} matched {finished} finished {no_driver} no_driver  errors: {errors}",
                    counts.join("  ")
                )
            }
            Mode::Quiet => Ok(()),
        };
    }

    pub(crate) fn finish(&mut self) {
        if self.mode == Mode::Live && self.drawn > 0 {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_samples() {
        let mut samples: Vec<u32> = (1..=100).map(|ms| ms * 1_000).collect();
        let latency = Latency::of(&mut samples);
        assert_eq!(
            latency,
            Latency {
                p50: 50.0,
                p99: 99.0,
                max: 100.0
            }
        );
        assert_eq!(Latency::of(&mut []), Latency::default());
    }

    #[test]
    fn failures_are_counted_by_cause_with_samples() {
        let mut stats = Stats::default();
        stats.record_success(Kind::Order, Duration::from_millis(2));
        for _ in 0..7 {
            stats.record_failure(
                Kind::Ping,
                Duration::from_millis(1),
                "HTTP 503".into(),
                "{\"error\":{}}".into(),
            );
        }
        let window = stats.take_window();
        assert_eq!(window.kinds[Kind::Order.index()].counts, (1, 1, 0));
        assert_eq!(window.kinds[Kind::Ping.index()].counts, (7, 0, 7));
        assert_eq!(stats.errors["HTTP 503"], 7);
        assert_eq!(stats.error_samples.len(), ERROR_SAMPLES);
        assert!(stats.error_samples[0].starts_with("pings: HTTP 503"));
        // A new window starts empty.
        assert_eq!(
            stats.take_window().kinds[Kind::Order.index()].latency,
            Latency::default()
        );
    }

    #[test]
    fn the_hottest_cells_lead_with_the_highest_multiplier() {
        let cells = serde_json::json!({"cells": [
            {"h3": "a", "multiplier": 1.0, "demand": 0, "supply": 3},
            {"h3": "b", "multiplier": 3.5, "demand": 9, "supply": 0},
            {"h3": "c", "multiplier": 2.0, "demand": 4, "supply": 2},
        ]});
        let names: Vec<String> = hottest(Some(&cells)).into_iter().map(|c| c.h3).collect();
        assert_eq!(names, vec!["b", "c", "a"]);
        assert!(hottest(None).is_empty());
    }
}
