//! The city simulator behind `pulse simulate` and `pulse demo`: drivers and riders of a
//! simulated city ([`city`]) driving a running Pulse through its public HTTP API only, with live
//! progress and a summary ([`report`]). Drivers report their location; a rider asks for a quote
//! and orders with its `quote_id`, as an app would. Each order is followed until Pulse matched it
//! (or gave up: `no_driver`); its driver then drives to the pickup, starts the ride, drives to the
//! dropoff and finishes it, through the same API a driver app would use.
//!
//! Requests are sent concurrently up to a limit; when Pulse is slower than the city, the city
//! waits (the achieved rates in the summary say so) rather than queueing without bound. Every
//! failed request is counted by cause and reported, never dropped.

pub mod city;
pub mod report;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::city::{City, CityBox, CitySettings, Request};
use crate::report::{Kind, Progress, Stats, Summary};

/// Seconds one simulation tick stands for.
const TICK: Duration = Duration::from_millis(100);
/// Each request gives up after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Reading Pulse's map for the progress view gives up after this.
const MAP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an order is followed for its match (Pulse retries a minute by default).
const WATCH_FOR: Duration = Duration::from_secs(90);
/// First and longest wait between two reads of a followed order.
const WATCH_EVERY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// An order Pulse matched, for the city to drive.
#[derive(Debug)]
struct Matched {
    order_id: String,
    driver_id: String,
    pickup: city::Position,
    dropoff: city::Position,
}

/// How to run a simulation.
#[derive(Debug, Clone)]
pub struct SimSettings {
    /// Base URL of the Pulse to drive, e.g. `http://127.0.0.1:8080`.
    pub target: String,
    /// Drivers.
    pub drivers: usize,
    /// Riders.
    pub riders: usize,
    /// Orders per second.
    pub order_rate: f64,
    /// Demand hotspots.
    pub hotspots: usize,
    /// Seconds between two pings of a driver.
    pub ping_interval: Duration,
    /// Speed of a driver on a ride, metres per second (sped up, so rides finish in a demo).
    pub ride_speed_mps: f64,
    /// The area.
    pub city: CityBox,
    /// Seed of every random choice.
    pub seed: u64,
    /// How long to run; `None` = until stopped.
    pub duration: Option<Duration>,
    /// Most requests in flight.
    pub concurrency: usize,
    /// The API key every request sends (`X-API-Key`); its tenant is the city's.
    pub api_key: Option<String>,
    /// What each rider's wallet is topped up with before its first order, minor units (0: none).
    pub top_up_minor: i64,
}

impl SimSettings {
    /// Checks the settings, with a message naming the flag at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.target.starts_with("http://"),
            "--target must be an http:// URL, got {:?}",
            self.target
        );
        anyhow::ensure!(
            self.order_rate.is_finite() && (0.0..=10_000.0).contains(&self.order_rate),
            "--rate must be between 0 and 10000 orders per second"
        );
        anyhow::ensure!(
            self.drivers <= 100_000 && self.hotspots <= 100 && self.riders <= 10_000_000,
            "at most 100000 drivers, 10000000 riders and 100 hotspots"
        );
        anyhow::ensure!(
            self.riders > 0 || self.order_rate == 0.0,
            "--riders must be at least 1 when --rate is above 0"
        );
        anyhow::ensure!(
            (1..=4096).contains(&self.concurrency),
            "--concurrency must be between 1 and 4096"
        );
        anyhow::ensure!(
            self.ride_speed_mps.is_finite() && (1.0..=10_000.0).contains(&self.ride_speed_mps),
            "--ride-speed must be between 1 and 10000 metres per second"
        );
        anyhow::ensure!(
            self.ping_interval >= TICK,
            "--ping-interval must be at least {} ms",
            TICK.as_millis()
        );
        Ok(())
    }
}

/// Runs the simulation until its duration is over or `stop` is cancelled, reporting progress
/// through `progress`, and returns the summary.
pub async fn run(
    settings: SimSettings,
    stop: CancellationToken,
    mut progress: Progress,
) -> anyhow::Result<Summary> {
    settings.validate()?;
    let target = settings.target.trim_end_matches('/').to_owned();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = &settings.api_key {
        let mut value = reqwest::header::HeaderValue::from_str(key)
            .context("the API key is not a valid header value")?;
        value.set_sensitive(true);
        headers.insert("x-api-key", value);
    }
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(settings.concurrency)
        .default_headers(headers)
        .build()
        .context("cannot build the HTTP client")?;
    client
        .get(format!("{target}/healthz"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| {
            format!(
                "cannot reach Pulse at {target} (start it with `pulse up`, or run `pulse demo`)"
            )
        })?;

    let mut city = City::new(
        CitySettings {
            bounds: settings.city,
            drivers: settings.drivers,
            riders: settings.riders,
            order_rate: settings.order_rate,
            hotspots: settings.hotspots,
            ping_interval_secs: settings.ping_interval.as_secs_f64(),
            ride_speed_mps: settings.ride_speed_mps,
            tick_secs: TICK.as_secs_f64(),
        },
        settings.seed,
    );
    let stats = Arc::new(Mutex::new(Stats::default()));
    let wallets = Arc::new(Wallets {
        amount_minor: settings.top_up_minor,
        // One key per run: a rerun on the same data tops up again, a retry within it does not.
        run: format!("sim-{}-{}", settings.seed, started_ms()),
        done: Mutex::new(std::collections::HashSet::new()),
    });
    let (matches_sender, mut matches) = tokio::sync::mpsc::unbounded_channel::<Matched>();
    // Followers of orders end with the run.
    let followers = stop.child_token();
    let in_flight = Arc::new(Semaphore::new(settings.concurrency));
    let started = Instant::now();
    let deadline = settings.duration.map(|duration| started + duration);
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The hottest cells come from Pulse's map, read beside the load so a slow map never slows
    // the city down.
    let (cells_sender, cells) = tokio::sync::watch::channel(None::<Value>);
    let cells_reader = {
        let (client, target, stop) = (client.clone(), target.clone(), stop.clone());
        let every = progress.every();
        tokio::spawn(async move {
            loop {
                let _ = cells_sender.send(fetch_cells(&client, &target).await);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
            }
        })
    };
    let mut next_report = Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            break;
        }
        while let Ok(matched) = matches.try_recv() {
            city.assign(
                &matched.driver_id,
                &matched.order_id,
                matched.pickup,
                matched.dropoff,
            );
        }
        for request in city.step() {
            // Waiting here is the backpressure: the city slows down with the server.
            let permit = tokio::select! {
                () = stop.cancelled() => break,
                permit = in_flight.clone().acquire_owned() => permit.context("request limiter closed")?,
            };
            let (client, target, stats) = (client.clone(), target.clone(), stats.clone());
            let follow = Follow {
                matches: matches_sender.clone(),
                stop: followers.clone(),
                wallets: wallets.clone(),
            };
            tokio::spawn(async move {
                send(&client, &target, request, &stats, follow).await;
                drop(permit);
            });
        }
        if Instant::now() >= next_report {
            next_report = Instant::now() + progress.every();
            let snapshot = stats.lock().expect("stats lock").take_window();
            progress.report(started.elapsed(), &snapshot, cells.borrow().as_ref());
        }
    }
    cells_reader.abort();
    followers.cancel();
    // Let what is in flight finish, so the summary counts every request sent.
    let _all = in_flight
        .acquire_many(settings.concurrency as u32)
        .await
        .context("request limiter closed")?;
    let elapsed = started.elapsed();
    let cells = fetch_cells(&client, &target).await;
    let ledger = fetch_ledger(&client, &target).await;
    let stats = stats.lock().expect("stats lock").clone();
    progress.finish();
    Ok(Summary::new(
        &settings,
        elapsed,
        &stats,
        city.hotspots(),
        cells.as_ref(),
        ledger,
    ))
}

/// Where a followed order's match goes, and when following ends.
#[derive(Debug, Clone)]
struct Follow {
    matches: tokio::sync::mpsc::UnboundedSender<Matched>,
    stop: CancellationToken,
    wallets: Arc<Wallets>,
}

/// The riders' wallets: each is topped up once, before its first order of the run.
#[derive(Debug)]
struct Wallets {
    amount_minor: i64,
    run: String,
    done: Mutex<std::collections::HashSet<String>>,
}

impl Wallets {
    /// Whether this is `user_id`'s first order of the run (and marks it: the sign-up and the
    /// top-up happen once, a failed one is not retried).
    fn first_order(&self, user_id: &str) -> bool {
        self.done
            .lock()
            .expect("wallets lock")
            .insert(user_id.to_owned())
    }
}

/// A rider's app: its device (one of the user agents, fixed per rider) and its anonymous id
/// before sign-up, as Segment's libraries would send them.
#[derive(Debug, Clone)]
struct Analytics {
    user_id: String,
    anonymous_id: String,
    user_agent: &'static str,
}

/// The user agents the riders' apps and browsers send: phones, a tablet, desktops.
const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
];

impl Analytics {
    fn of(user_id: &str) -> Self {
        let hash = user_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Self {
            user_id: user_id.to_owned(),
            anonymous_id: format!("anon-{user_id}"),
            // Two phones for every desktop or tablet, as ride apps see.
            user_agent: USER_AGENTS[[0, 1, 0, 1, 2, 3][(hash % 6) as usize]],
        }
    }

    fn context(&self) -> Value {
        json!({"userAgent": self.user_agent, "library": {"name": "pulse-simulate", "version": "1"}})
    }

    /// Before an order: the app opened (anonymous page views before the first sign-up, then
    /// the identify that links the two ids), and the booking page.
    fn before_order(&self, first_order: bool) -> Vec<Value> {
        let mut calls = Vec::new();
        if first_order {
            for page in ["Home", "Pricing"] {
                calls.push(json!({"type": "page", "anonymousId": self.anonymous_id,
                    "name": page, "context": self.context()}));
            }
            calls.push(json!({"type": "identify", "userId": self.user_id,
                "anonymousId": self.anonymous_id, "context": self.context(),
                "traits": {"email": format!("{}@riders.example", self.user_id), "plan": "rider"}}));
        }
        calls.push(
            json!({"type": "page", "userId": self.user_id, "name": "Book a ride",
            "context": self.context()}),
        );
        calls
    }

    /// After an order: the track call around it, from where the rider stands.
    fn after_order(&self, order_id: Option<&str>, at: city::Position) -> Vec<Value> {
        let event = if order_id.is_some() {
            "Order Placed"
        } else {
            "Order Failed"
        };
        let mut context = self.context();
        context["location"] = json!({"latitude": at.lat, "longitude": at.lng});
        vec![
            json!({"type": "track", "userId": self.user_id, "event": event,
            "properties": {"order_id": order_id}, "context": context}),
        ]
    }
}

/// Sends the app's `calls` as one Segment batch.
async fn send_analytics(
    client: &reqwest::Client,
    target: &str,
    stats: &Mutex<Stats>,
    calls: Vec<Value>,
) {
    let batch = client
        .post(format!("{target}/v1/batch"))
        .json(&json!({ "batch": calls }));
    exchange(Kind::Analytics, batch, stats).await;
}

fn started_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis())
}

/// The tenant's ledger totals, if Pulse answers them.
async fn fetch_ledger(client: &reqwest::Client, target: &str) -> Option<report::LedgerSummary> {
    let response = client
        .get(format!("{target}/api/v1/ledger/totals"))
        .timeout(MAP_TIMEOUT)
        .send()
        .await
        .ok()?;
    response.error_for_status().ok()?.json().await.ok()
}

/// Sends one request of the city (a rider's is a quote, then an order with the quote's id) and
/// records the outcomes; a placed order is followed (in a task of its own) until it is matched.
async fn send(
    client: &reqwest::Client,
    target: &str,
    request: Request,
    stats: &Arc<Mutex<Stats>>,
    follow: Follow,
) {
    match request {
        Request::Ping {
            driver_id,
            at,
            available,
        } => {
            let ping = client
                .post(format!("{target}/api/v1/drivers/{driver_id}/location"))
                .json(&json!({ "lat": at.lat, "lng": at.lng, "available": available }));
            exchange(Kind::Ping, ping, stats).await;
        }
        Request::Order {
            user_id,
            pickup,
            dropoff,
        } => {
            let quote = client.get(format!(
                "{target}/api/v1/quote?lat={}&lng={}&dropoff_lat={}&dropoff_lng={}",
                pickup.lat, pickup.lng, dropoff.lat, dropoff.lng
            ));
            // A rider whose quote failed, or came without an id (Pulse's cache is down), still
            // orders, at the price of the moment.
            let quoted = exchange(Kind::Quote, quote, stats).await;
            let quote_id = quoted
                .as_ref()
                .and_then(|quote| quote.get("quote_id")?.as_str().map(str::to_owned));
            let analytics = Analytics::of(&user_id);
            let first_order = follow.wallets.first_order(&user_id);
            send_analytics(client, target, stats, analytics.before_order(first_order)).await;
            if first_order && follow.wallets.amount_minor > 0 {
                let currency = quoted
                    .as_ref()
                    .and_then(|quote| quote["price"]["total"]["currency"].as_str())
                    .unwrap_or("USD");
                let top_up = client
                    .post(format!("{target}/api/v1/riders/{user_id}/wallet/top-ups"))
                    .json(&json!({
                        "amount_minor": follow.wallets.amount_minor,
                        "currency": currency,
                        "idempotency_key": follow.wallets.run,
                    }));
                exchange(Kind::TopUp, top_up, stats).await;
            }
            let mut order = json!({
                "user_id": user_id,
                "pickup": { "lat": pickup.lat, "lng": pickup.lng },
                "dropoff": { "lat": dropoff.lat, "lng": dropoff.lng },
            });
            if let Some(quote_id) = quote_id {
                order["quote_id"] = Value::String(quote_id);
            }
            let order = client.post(format!("{target}/api/v1/orders")).json(&order);
            let placed = exchange(Kind::Order, order, stats).await;
            let order_id = placed.as_ref().and_then(|order| order["order_id"].as_str());
            send_analytics(
                client,
                target,
                stats,
                analytics.after_order(order_id, pickup),
            )
            .await;
            if let Some(order_id) = placed
                .as_ref()
                .and_then(|order| order["order_id"].as_str())
                .map(str::to_owned)
            {
                let (client, target, stats) = (client.clone(), target.to_owned(), stats.clone());
                tokio::spawn(async move {
                    let matched =
                        follow_order(&client, &target, &order_id, &stats, &follow.stop).await;
                    if let Some(driver_id) = matched {
                        let _ = follow.matches.send(Matched {
                            order_id,
                            driver_id,
                            pickup,
                            dropoff,
                        });
                    }
                });
            }
        }
        Request::Move {
            order_id,
            driver_id,
            status,
        } => {
            let move_ride = client
                .post(format!("{target}/api/v1/orders/{order_id}/status"))
                .json(&json!({ "status": status, "driver_id": driver_id }));
            if exchange(Kind::Move, move_ride, stats).await.is_some() {
                stats
                    .lock()
                    .expect("stats lock")
                    .record_move(status == "STARTED");
            }
        }
    }
}

/// Reads `order_id` (more and more rarely) until Pulse matched it — recording the match and its
/// latency from the order's history — or gave up on it; returns the matched driver.
async fn follow_order(
    client: &reqwest::Client,
    target: &str,
    order_id: &str,
    stats: &Mutex<Stats>,
    stop: &CancellationToken,
) -> Option<String> {
    let started = Instant::now();
    let mut every = WATCH_EVERY.0;
    while started.elapsed() < WATCH_FOR {
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(every) => {}
        }
        every = (every * 2).min(WATCH_EVERY.1);
        let Ok(response) = client
            .get(format!("{target}/api/v1/orders/{order_id}"))
            .send()
            .await
        else {
            continue;
        };
        let Ok(order) = response.json::<Value>().await else {
            continue;
        };
        if order.get("no_driver").is_some() {
            stats.lock().expect("stats lock").record_no_driver();
            return None;
        }
        match order["status"].as_str() {
            Some("MATCHED") => {
                let latency = match_latency(&order).unwrap_or(started.elapsed());
                stats.lock().expect("stats lock").record_match(latency);
                return order["driver_id"].as_str().map(str::to_owned);
            }
            Some("PENDING") => {}
            _ => return None,
        }
    }
    None
}

/// Placement to match, from the order's history as Pulse recorded it.
fn match_latency(order: &Value) -> Option<Duration> {
    let at = |text: &Value| humantime::parse_rfc3339(text.as_str()?).ok();
    let placed = at(&order["created_at"])?;
    let matched = order["history"]
        .as_array()?
        .iter()
        .find(|step| step["status"] == "MATCHED")
        .and_then(|step| at(&step["at"]))?;
    matched.duration_since(placed).ok()
}

/// Sends one request, records its outcome, and returns the JSON body of a success.
async fn exchange(
    kind: Kind,
    request: reqwest::RequestBuilder,
    stats: &Mutex<Stats>,
) -> Option<Value> {
    let sent = Instant::now();
    let outcome = match request.send().await {
        Ok(response) if response.status().is_success() => {
            Ok(response.json::<Value>().await.unwrap_or(Value::Null))
        }
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            Err((format!("HTTP {}", status.as_u16()), body))
        }
        Err(err) => {
            let cause = if err.is_timeout() {
                "timeout"
            } else if err.is_connect() {
                "connection refused"
            } else {
                "transport error"
            };
            Err((cause.to_owned(), err.to_string()))
        }
    };
    let latency = sent.elapsed();
    let mut stats = stats.lock().expect("stats lock");
    match outcome {
        Ok(body) => {
            stats.record_success(kind, latency);
            Some(body)
        }
        Err((cause, detail)) => {
            stats.record_failure(kind, latency, cause, detail);
            None
        }
    }
}

/// The server's current surge cells, for the hottest-cells view; `None` when it does not answer
/// within [`MAP_TIMEOUT`] (the map is a nicety here, not part of the load).
async fn fetch_cells(client: &reqwest::Client, target: &str) -> Option<Value> {
    let response = client
        .get(format!("{target}/api/v1/surge/cells"))
        .timeout(MAP_TIMEOUT)
        .send()
        .await
        .ok()?;
    response.error_for_status().ok()?.json().await.ok()
}
