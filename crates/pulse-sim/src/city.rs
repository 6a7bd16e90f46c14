//! The simulated city: a bounding box, demand hotspots that drift, drivers that drive towards
//! destinations (often a hotspot: supply chases demand) and take trips, and riders who order
//! mostly near a hotspot.
//!
//! Everything advances in fixed ticks and draws from one seeded generator, so a seed fixes the
//! whole sequence of requests, whatever the wall clock or the server does.

use std::f64::consts::TAU;
use std::fmt;
use std::str::FromStr;

/// Metres per degree of latitude.
const METRES_PER_DEGREE: f64 = 111_320.0;

/// A position, degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Position {
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lng: f64,
}

/// The area the city covers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CityBox {
    south: f64,
    west: f64,
    north: f64,
    east: f64,
}

impl CityBox {
    /// Central Berlin, the default city: about 16 km × 14 km.
    pub const BERLIN: CityBox = CityBox {
        south: 52.45,
        west: 13.28,
        north: 52.58,
        east: 13.52,
    };

    /// The box's centre.
    pub fn center(&self) -> Position {
        Position {
            lat: (self.south + self.north) / 2.0,
            lng: (self.west + self.east) / 2.0,
        }
    }

    fn clamp(&self, position: Position) -> Position {
        Position {
            lat: position.lat.clamp(self.south, self.north),
            lng: position.lng.clamp(self.west, self.east),
        }
    }

    fn random_point(&self, rng: &mut fastrand::Rng) -> Position {
        Position {
            lat: self.south + rng.f64() * (self.north - self.south),
            lng: self.west + rng.f64() * (self.east - self.west),
        }
    }

    /// A point at least `margin` (a fraction of the size) inside the edges.
    fn inner_point(&self, rng: &mut fastrand::Rng, margin: f64) -> Position {
        let (height, width) = (self.north - self.south, self.east - self.west);
        Position {
            lat: self.south + height * (margin + rng.f64() * (1.0 - 2.0 * margin)),
            lng: self.west + width * (margin + rng.f64() * (1.0 - 2.0 * margin)),
        }
    }
}

impl fmt::Display for CityBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{},{},{}",
            self.south, self.west, self.north, self.east
        )
    }
}

impl FromStr for CityBox {
    type Err = String;

    /// `berlin`, or `south,west,north,east` in degrees.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.eq_ignore_ascii_case("berlin") {
            return Ok(Self::BERLIN);
        }
        let numbers: Vec<f64> = text
            .split(',')
            .map(|part| part.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                format!("expected `berlin` or SOUTH,WEST,NORTH,EAST in degrees, got {text:?}")
            })?;
        let [south, west, north, east] = numbers[..] else {
            return Err(format!(
                "expected four numbers SOUTH,WEST,NORTH,EAST, got {}",
                numbers.len()
            ));
        };
        let valid = (-85.0..=85.0).contains(&south)
            && (-85.0..=85.0).contains(&north)
            && (-180.0..=180.0).contains(&west)
            && (-180.0..=180.0).contains(&east)
            && south < north
            && west < east;
        if !valid {
            return Err(format!(
                "{text:?} is not a box: need -85 <= SOUTH < NORTH <= 85 and -180 <= WEST < EAST <= 180"
            ));
        }
        Ok(Self {
            south,
            west,
            north,
            east,
        })
    }
}

/// What the city asks of Pulse in one tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `POST /api/v1/drivers/{driver_id}/location`.
    Ping {
        /// Driver id.
        driver_id: String,
        /// Where the driver is.
        at: Position,
        /// Whether the driver takes rides.
        available: bool,
    },
    /// `POST /api/v1/orders`.
    Order {
        /// Rider id.
        user_id: String,
        /// Pickup.
        pickup: Position,
        /// Dropoff.
        dropoff: Position,
    },
    /// `POST /api/v1/orders/{order_id}/status`: the driver picked the rider up, or dropped
    /// them off.
    Move {
        /// The order.
        order_id: String,
        /// Its driver.
        driver_id: String,
        /// `STARTED` or `FINISHED`.
        status: &'static str,
    },
}

/// A ride a driver was matched to, as the city drives it.
#[derive(Debug, Clone, PartialEq)]
struct Ride {
    order_id: String,
    pickup: Position,
    dropoff: Position,
    /// The rider is on board.
    started: bool,
}

/// The shape of a simulated city.
#[derive(Debug, Clone)]
pub struct CitySettings {
    /// The area.
    pub bounds: CityBox,
    /// Drivers.
    pub drivers: usize,
    /// Riders (distinct user ids orders are placed for).
    pub riders: usize,
    /// Orders per second over the whole city.
    pub order_rate: f64,
    /// Demand hotspots.
    pub hotspots: usize,
    /// Seconds between two pings of one driver.
    pub ping_interval_secs: f64,
    /// Speed of a driver on a ride, metres per second.
    pub ride_speed_mps: f64,
    /// Seconds one tick stands for.
    pub tick_secs: f64,
}

#[derive(Debug, Clone)]
struct Hotspot {
    at: Position,
    heading: f64,
}

#[derive(Debug, Clone)]
struct Driver {
    id: String,
    at: Position,
    destination: Position,
    speed_mps: f64,
    available: bool,
    /// Ticks left on the current break (unavailable meanwhile).
    trip_ticks: u64,
    /// The ride Pulse matched it to, if any.
    ride: Option<Ride>,
    /// Offset of this driver's pings among the ticks, so pings spread evenly.
    phase: u64,
}

/// Share of orders picked up near a hotspot (the rest anywhere in the city).
const HOTSPOT_SHARE: f64 = 0.7;
/// Spread of pickups around a hotspot, metres (one standard deviation).
const PICKUP_SPREAD_M: f64 = 250.0;
/// Spread of drivers heading for a hotspot: they cruise the wider area around it.
const CRUISE_SPREAD_M: f64 = 700.0;
/// Share of drivers that start the run near a hotspot (the rest anywhere).
const STARTING_NEAR_HOTSPOT: f64 = 0.4;
/// How fast hotspots drift, metres per second (demand moves across town over tens of minutes).
const HOTSPOT_DRIFT_MPS: f64 = 4.0;
/// Chance, per ping of an available driver, of taking a break (it reports itself unavailable).
const TRIP_CHANCE: f64 = 0.03;

/// The simulated city.
#[derive(Debug)]
pub struct City {
    settings: CitySettings,
    rng: fastrand::Rng,
    hotspots: Vec<Hotspot>,
    drivers: Vec<Driver>,
    ping_every_ticks: u64,
    orders_owed: f64,
    tick: u64,
}

impl City {
    /// A city laid out from `seed`.
    pub fn new(settings: CitySettings, seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let bounds = settings.bounds;
        let hotspots = (0..settings.hotspots)
            .map(|_| Hotspot {
                at: bounds.inner_point(&mut rng, 0.2),
                heading: rng.f64() * TAU,
            })
            .collect();
        let ping_every_ticks =
            ((settings.ping_interval_secs / settings.tick_secs).round() as u64).max(1);
        let mut city = Self {
            settings,
            rng,
            hotspots,
            drivers: Vec::new(),
            ping_every_ticks,
            orders_owed: 0.0,
            tick: 0,
        };
        city.drivers = (0..city.settings.drivers)
            .map(|index| {
                let at = if city.rng.f64() < STARTING_NEAR_HOTSPOT {
                    city.near_hotspot(CRUISE_SPREAD_M)
                } else {
                    bounds.random_point(&mut city.rng)
                };
                Driver {
                    id: format!("driver-{index}"),
                    at,
                    destination: bounds.random_point(&mut city.rng),
                    speed_mps: 6.0 + city.rng.f64() * 8.0,
                    available: true,
                    trip_ticks: 0,
                    ride: None,
                    phase: city.rng.u64(0..ping_every_ticks),
                }
            })
            .collect();
        city
    }

    /// Where the hotspots are now.
    pub fn hotspots(&self) -> Vec<Position> {
        self.hotspots.iter().map(|hotspot| hotspot.at).collect()
    }

    /// Advances one tick and returns the requests it produces, pings first.
    pub fn step(&mut self) -> Vec<Request> {
        self.tick += 1;
        let tick_secs = self.settings.tick_secs;
        let bounds = self.settings.bounds;
        for hotspot in &mut self.hotspots {
            // A slow random walk that turns back at the edges.
            hotspot.heading += (self.rng.f64() - 0.5) * 0.2;
            let next = moved(hotspot.at, hotspot.heading, HOTSPOT_DRIFT_MPS * tick_secs);
            if bounds.clamp(next) != next {
                hotspot.heading += std::f64::consts::PI;
            } else {
                hotspot.at = next;
            }
        }
        let mut requests = Vec::new();
        for index in 0..self.drivers.len() {
            if let Some(moved) = self.drive(index) {
                requests.push(moved);
            }
            let driver = &mut self.drivers[index];
            if !(self.tick + driver.phase).is_multiple_of(self.ping_every_ticks) {
                continue;
            }
            // A driver on a ride keeps reporting itself available, as a driver app online
            // would: Pulse knows it is on a ride and never counts or matches it meanwhile.
            if driver.available && driver.ride.is_none() && self.rng.f64() < TRIP_CHANCE {
                driver.available = false;
                let trip_secs = 20.0 + self.rng.f64() * 70.0;
                driver.trip_ticks = (trip_secs / tick_secs) as u64;
            }
            requests.push(Request::Ping {
                driver_id: driver.id.clone(),
                at: driver.at,
                available: driver.available,
            });
        }
        self.orders_owed += self.settings.order_rate * tick_secs;
        while self.orders_owed >= 1.0 {
            self.orders_owed -= 1.0;
            let pickup = self.pickup();
            requests.push(Request::Order {
                user_id: format!("rider-{}", self.rng.usize(0..self.settings.riders.max(1))),
                pickup,
                dropoff: bounds.random_point(&mut self.rng),
            });
        }
        requests
    }

    /// Gives `order_id` to `driver_id` (as Pulse matched it): the driver heads for the pickup,
    /// then the dropoff. Returns `false` for a driver the city does not know or that is already
    /// on a ride.
    pub fn assign(
        &mut self,
        driver_id: &str,
        order_id: &str,
        pickup: Position,
        dropoff: Position,
    ) -> bool {
        let index = driver_id
            .strip_prefix("driver-")
            .and_then(|index| index.parse::<usize>().ok());
        let Some(driver) = index.and_then(|index| self.drivers.get_mut(index)) else {
            return false;
        };
        if driver.id != driver_id || driver.ride.is_some() {
            return false;
        }
        driver.destination = pickup;
        driver.ride = Some(Ride {
            order_id: order_id.to_owned(),
            pickup,
            dropoff,
            started: false,
        });
        true
    }

    /// Drivers on a ride now.
    pub fn riding(&self) -> usize {
        self.drivers
            .iter()
            .filter(|driver| driver.ride.is_some())
            .count()
    }

    /// Moves one driver along. On a ride it drives to the pickup, then to the dropoff, and says
    /// so (the returned move); otherwise, on arrival it picks a new destination, half the time
    /// near a hotspot.
    fn drive(&mut self, index: usize) -> Option<Request> {
        let tick_secs = self.settings.tick_secs;
        let ride_speed = self.settings.ride_speed_mps;
        let bounds = self.settings.bounds;
        let near_hotspot = self.rng.bool() && !self.hotspots.is_empty();
        let hotspot = self.near_hotspot(CRUISE_SPREAD_M);
        let fallback = bounds.random_point(&mut self.rng);
        let driver = &mut self.drivers[index];
        if driver.trip_ticks > 0 {
            driver.trip_ticks -= 1;
            if driver.trip_ticks == 0 {
                driver.available = true;
            }
        }
        let speed = if driver.ride.is_some() {
            ride_speed
        } else {
            driver.speed_mps
        };
        let step_m = speed * tick_secs;
        let remaining_m = distance_m(driver.at, driver.destination);
        if remaining_m > step_m {
            let heading = bearing(driver.at, driver.destination);
            driver.at = bounds.clamp(moved(driver.at, heading, step_m));
            return None;
        }
        driver.at = driver.destination;
        let Some(ride) = driver.ride.as_mut() else {
            driver.destination = if near_hotspot { hotspot } else { fallback };
            return None;
        };
        let status = if ride.started { "FINISHED" } else { "STARTED" };
        let order_id = ride.order_id.clone();
        if ride.started {
            driver.ride = None;
            driver.destination = if near_hotspot { hotspot } else { fallback };
        } else {
            ride.started = true;
            driver.destination = ride.dropoff;
        }
        Some(Request::Move {
            order_id,
            driver_id: driver.id.clone(),
            status,
        })
    }

    /// A point scattered `spread_m` (one standard deviation) around a random hotspot.
    fn near_hotspot(&mut self, spread_m: f64) -> Position {
        if self.hotspots.is_empty() {
            return self.settings.bounds.center();
        }
        let centre = self.hotspots[self.rng.usize(0..self.hotspots.len())].at;
        let (dx, dy) = self.gaussian_pair();
        let scattered = Position {
            lat: centre.lat + dy * spread_m / METRES_PER_DEGREE,
            lng: centre.lng + dx * spread_m / metres_per_degree_lng(centre.lat),
        };
        self.settings.bounds.clamp(scattered)
    }

    fn pickup(&mut self) -> Position {
        if self.rng.f64() < HOTSPOT_SHARE {
            self.near_hotspot(PICKUP_SPREAD_M)
        } else {
            self.settings.bounds.random_point(&mut self.rng)
        }
    }

    /// Two independent standard normal draws (Box–Muller).
    fn gaussian_pair(&mut self) -> (f64, f64) {
        let radius = (-2.0 * (1.0 - self.rng.f64()).ln()).sqrt();
        let angle = TAU * self.rng.f64();
        (radius * angle.cos(), radius * angle.sin())
    }
}

fn metres_per_degree_lng(lat: f64) -> f64 {
    (METRES_PER_DEGREE * lat.to_radians().cos()).max(1.0)
}

/// Equirectangular approximation: exact enough within a city.
fn distance_m(a: Position, b: Position) -> f64 {
    let dy = (b.lat - a.lat) * METRES_PER_DEGREE;
    let dx = (b.lng - a.lng) * metres_per_degree_lng(a.lat);
    dx.hypot(dy)
}

/// Heading from `a` to `b`, radians counter-clockwise from east.
fn bearing(a: Position, b: Position) -> f64 {
    let dy = (b.lat - a.lat) * METRES_PER_DEGREE;
    let dx = (b.lng - a.lng) * metres_per_degree_lng(a.lat);
    dy.atan2(dx)
}

fn moved(from: Position, heading: f64, metres: f64) -> Position {
    Position {
        lat: from.lat + metres * heading.sin() / METRES_PER_DEGREE,
        lng: from.lng + metres * heading.cos() / metres_per_degree_lng(from.lat),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CitySettings {
        CitySettings {
            bounds: CityBox::BERLIN,
            drivers: 50,
            riders: 100,
            order_rate: 20.0,
            hotspots: 3,
            ping_interval_secs: 3.0,
            ride_speed_mps: 60.0,
            tick_secs: 0.1,
        }
    }

    fn run(seed: u64, ticks: usize) -> Vec<Request> {
        let mut city = City::new(settings(), seed);
        (0..ticks).flat_map(|_| city.step()).collect()
    }

    #[test]
    fn a_seed_fixes_every_request() {
        assert_eq!(run(7, 200), run(7, 200));
        assert_ne!(run(7, 200), run(8, 200));
    }

    #[test]
    fn rates_match_the_settings_and_everything_stays_in_the_city() {
        // 30 simulated seconds: 20 orders/s, and every driver pings every 3 s.
        let requests = run(1, 300);
        let orders = requests
            .iter()
            .filter(|r| matches!(r, Request::Order { .. }))
            .count();
        let pings = requests.len() - orders;
        assert_eq!(orders, 600);
        assert_eq!(pings, 50 * 10);
        let inside = |p: &Position| CityBox::BERLIN.clamp(*p) == *p;
        for request in &requests {
            match request {
                Request::Ping { at, .. } => assert!(inside(at), "{request:?}"),
                Request::Order {
                    pickup, dropoff, ..
                } => assert!(inside(pickup) && inside(dropoff), "{request:?}"),
                Request::Move { .. } => panic!("no ride was assigned: {request:?}"),
            }
        }
        // Some drivers take breaks (unavailable for a while).
        assert!(requests.iter().any(|r| matches!(
            r,
            Request::Ping {
                available: false,
                ..
            }
        )));
    }

    #[test]
    fn most_pickups_gather_near_the_hotspots() {
        let mut city = City::new(settings(), 3);
        let hotspots = city.hotspots();
        let requests: Vec<Request> = (0..100).flat_map(|_| city.step()).collect();
        let (mut near, mut total) = (0, 0);
        for request in requests {
            if let Request::Order { pickup, .. } = request {
                total += 1;
                if hotspots.iter().any(|h| distance_m(*h, pickup) < 1_000.0) {
                    near += 1;
                }
            }
        }
        assert!(near * 2 > total, "{near} of {total} near a hotspot");
    }

    #[test]
    fn boxes_parse_or_say_what_is_wrong() {
        assert_eq!("berlin".parse::<CityBox>(), Ok(CityBox::BERLIN));
        let custom: CityBox = "40.70,-74.02,40.80,-73.93".parse().expect("box");
        assert_eq!(custom.to_string(), "40.7,-74.02,40.8,-73.93");
        assert!("1,2,3".parse::<CityBox>().unwrap_err().contains("four"));
        assert!("3,2,1,4"
            .parse::<CityBox>()
            .unwrap_err()
            .contains("not a box"));
        assert!("a,b,c,d".parse::<CityBox>().unwrap_err().contains("SOUTH"));
    }

    #[test]
    fn a_matched_driver_drives_to_the_pickup_starts_drives_to_the_dropoff_and_finishes() {
        let mut city = City::new(settings(), 7);
        let pickup = Position {
            lat: 52.52,
            lng: 13.40,
        };
        let dropoff = Position {
            lat: 52.53,
            lng: 13.41,
        };
        assert!(
            !city.assign("driver-999999", "o-1", pickup, dropoff),
            "unknown driver"
        );
        assert!(city.assign("driver-0", "o-1", pickup, dropoff));
        assert!(
            !city.assign("driver-0", "o-2", pickup, dropoff),
            "already on a ride"
        );
        let mut moves = Vec::new();
        for _ in 0..100_000 {
            for request in city.step() {
                if let Request::Move {
                    order_id,
                    driver_id,
                    status,
                } = request
                {
                    assert_eq!((order_id.as_str(), driver_id.as_str()), ("o-1", "driver-0"));
                    moves.push(status);
                }
            }
            if moves.len() == 2 {
                break;
            }
        }
        assert_eq!(moves, ["STARTED", "FINISHED"]);
        assert_eq!(city.riding(), 0);
        assert!(
            city.assign("driver-0", "o-2", pickup, dropoff),
            "free again"
        );
    }
}
