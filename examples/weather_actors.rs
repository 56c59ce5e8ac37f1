//! Ray's actor tutorial with weather data: one stateful actor per year holds that year's
//! daily GSOD-like readings; the driver finds the stations present in both years, then asks
//! both actors in parallel how many days reached 100 °F at those stations.
//!
//! The data is generated (deterministically, with a small xorshift) instead of downloaded.
//!
//! `cargo run --release --example weather_actors`

use std::collections::BTreeSet;
use std::time::Instant;

/// GSOD's marker for a missing reading.
const MISSING: f64 = 9999.9;
/// Station indices that exist in some year; each year keeps a different window of them.
const STATIONS_2021: std::ops::Range<u32> = 0..400;
const STATIONS_2022: std::ops::Range<u32> = 50..450;

/// xorshift64*: a tiny deterministic PRNG, enough for synthetic data.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // SplitMix64 step so that nearby seeds give unrelated streams (and never 0).
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        XorShift((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A USAF+WBAN station id, as in GSOD file names.
fn station_id(index: u32) -> String {
    format!("{:06}{:05}", 690_000 + index * 37, 10_000 + index)
}

/// One row of a GSOD-like file: the day's maximum temperature at a station.
#[derive(Debug, Clone)]
struct Reading {
    station: String,
    day_of_year: u16,
    max_temp_f: f64,
}

/// Generates the daily readings of `year`. A station's climate depends only on the station;
/// which stations reported, the weather of each day and the missing readings depend on the
/// year too.
fn generate_year(year: u32) -> Vec<Reading> {
    let (range, warming) = match year {
        2021 => (STATIONS_2021, 0.0),
        _ => (STATIONS_2022, 0.7),
    };
    let mut rows = Vec::new();
    for index in range {
        // About 10% of the stations did not report this year.
        let mut presence = XorShift::new(u64::from(year) << 32 | u64::from(index));
        if presence.next_f64() < 0.10 {
            continue;
        }
        let mut climate = XorShift::new(u64::from(index));
        let summer_peak = 68.0 + 34.0 * climate.next_f64(); // mean max temp in mid-July
        let swing = 25.0 + 20.0 * climate.next_f64(); // July minus January
        let station = station_id(index);
        let mut weather = XorShift::new(u64::from(year) * 1_000_003 + u64::from(index));
        for day in 1..=365u16 {
            let season = (2.0 * std::f64::consts::PI * (f64::from(day) - 196.0) / 365.0).cos();
            // A sum of uniforms: roughly normal noise of about ±6 °F.
            let noise: f64 = (0..4).map(|_| weather.next_f64() - 0.5).sum::<f64>() * 10.0;
            let mut max_temp_f = summer_peak - swing * (1.0 - season) / 2.0 + noise + warming;
            if weather.next_f64() < 0.01 {
                max_temp_f = MISSING;
            }
            rows.push(Reading {
                station: station.clone(),
                day_of_year: day,
                max_temp_f: (max_temp_f * 10.0).round() / 10.0,
            });
        }
    }
    rows
}

/// Holds one year of readings.
#[mobula::actor]
struct GsodActor {
    year: u32,
    high_temp: f64,
    rows: Vec<Reading>,
}

#[mobula::actor]
impl GsodActor {
    /// Loads (here: generates) the year's data once; later calls reuse it.
    pub fn new(year: u32, high_temp: f64) -> Self {
        GsodActor {
            year,
            high_temp,
            rows: generate_year(year),
        }
    }

    /// The year and the number of readings held.
    pub fn describe(&self) -> (u32, usize) {
        (self.year, self.rows.len())
    }

    /// The hottest reading of the year: (station, day of year, °F).
    pub fn hottest(&self) -> (String, u16, f64) {
        self.rows
            .iter()
            .filter(|r| r.max_temp_f != MISSING)
            .max_by(|a, b| a.max_temp_f.total_cmp(&b.max_temp_f))
            .map(|r| (r.station.clone(), r.day_of_year, r.max_temp_f))
            .unwrap_or_default()
    }

    /// The stations that reported this year, sorted.
    pub fn get_stations(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self.rows.iter().map(|r| r.station.as_str()).collect();
        set.into_iter().map(str::to_string).collect()
    }

    /// Readings at `stations` with a maximum temperature of at least the actor's threshold.
    pub fn get_high_temp_count(&self, stations: Vec<String>) -> u64 {
        let stations: BTreeSet<String> = stations.into_iter().collect();
        self.rows
            .iter()
            .filter(|r| r.max_temp_f != MISSING)
            .filter(|r| r.max_temp_f >= self.high_temp && stations.contains(&r.station))
            .count() as u64
    }
}

/// The same count on the driver, to check the actors' answers.
fn count_local(year: u32, high_temp: f64, stations: &BTreeSet<String>) -> u64 {
    generate_year(year)
        .iter()
        .filter(|r| r.max_temp_f != MISSING)
        .filter(|r| r.max_temp_f >= high_temp && stations.contains(&r.station))
        .count() as u64
}

#[mobula::main]
fn main() -> mobula::Result<()> {
    let start = Instant::now();
    let rt = mobula::init()?;
    let high_temp = 100.0;

    // Two actors, each loading its year in its constructor (in parallel). Should an actor's
    // process die, it is restarted (its constructor reloads the data) and the interrupted
    // call is retried.
    let options = mobula::ActorOptions::new()
        .max_restarts(4)
        .max_task_retries(4);
    let actor_2021 = GsodActor::options(options.clone()).remote(&rt, 2021u32, high_temp)?;
    let actor_2022 = GsodActor::options(options).remote(&rt, 2022u32, high_temp)?;
    for (year, rows) in rt.get_all(&[actor_2021.describe(), actor_2022.describe()])? {
        println!("{year}: {rows} daily readings loaded");
    }

    // The stations present in both years.
    let stations_2021 = actor_2021.get_stations();
    let stations_2022 = actor_2022.get_stations();
    let s2021: BTreeSet<String> = rt.get(&stations_2021)?.into_iter().collect();
    let s2022: BTreeSet<String> = rt.get(&stations_2022)?.into_iter().collect();
    let common: BTreeSet<String> = s2021.intersection(&s2022).cloned().collect();
    println!(
        "stations: {} in 2021, {} in 2022, {} in both",
        s2021.len(),
        s2022.len(),
        common.len()
    );

    // Both actors count at once.
    let common_list: Vec<String> = common.iter().cloned().collect();
    let counts = rt.get_all(&[
        actor_2021.get_high_temp_count(common_list.clone()),
        actor_2022.get_high_temp_count(common_list),
    ])?;
    let (c2021, c2022) = (counts[0], counts[1]);
    println!("readings >= {high_temp} °F at the common stations: 2021: {c2021}, 2022: {c2022}");
    let hottest = rt.get_all(&[actor_2021.hottest(), actor_2022.hottest()])?;
    for (year, (station, day, temp)) in [2021, 2022].iter().zip(hottest) {
        println!("hottest reading of {year}: {temp} °F at station {station} on day {day}");
    }
    match c2021.cmp(&c2022) {
        std::cmp::Ordering::Greater => println!("2021 had more hot days"),
        std::cmp::Ordering::Less => println!("2022 had more hot days"),
        std::cmp::Ordering::Equal => println!("both years had as many hot days"),
    }

    assert_eq!(c2021, count_local(2021, high_temp, &common));
    assert_eq!(c2022, count_local(2022, high_temp, &common));

    mobula::shutdown();
    println!("done in {:.1} ms", start.elapsed().as_secs_f64() * 1e3);
    Ok(())
}
