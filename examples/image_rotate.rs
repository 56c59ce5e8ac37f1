//! Ray's image-processing tutorial: a folder of images, each loaded, rotated 90 degrees and
//! saved by its own task, in parallel; then the same work done serially on the driver.
//!
//! The images are generated into a temporary directory first, so the example needs no data.
//!
//! `cargo run --release --example image_rotate`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::{ImageBuffer, Rgb, RgbImage};

const NUM_IMAGES: u32 = 16;
const SIZE: u32 = 512;

/// Writes image `index`: a deterministic pattern of gradients and rings that differs per image.
fn generate_image(dir: &Path, index: u32) -> Result<PathBuf, image::ImageError> {
    let img: RgbImage = ImageBuffer::from_fn(SIZE, SIZE, |x, y| {
        let (cx, cy) = (SIZE as i64 / 2, (index as i64 * 13) % SIZE as i64);
        let (dx, dy) = (x as i64 - cx, y as i64 - cy);
        let ring = ((dx * dx + dy * dy) as f64).sqrt() as u32 * (index + 1) / 4;
        Rgb([
            (x * (index + 1)) as u8,
            (y + index * 16) as u8,
            if ring.is_multiple_of(2) {
                230
            } else {
                20 + index as u8 * 5
            },
        ])
    });
    let path = dir.join(format!("image_{index:02}.png"));
    img.save(&path)?;
    Ok(path)
}

/// The rotated copy of `path`: `image_03.png` -> `image_03_rotated.png`.
fn rotated_path(path: &Path) -> PathBuf {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
    path.with_file_name(format!("{stem}_rotated.png"))
}

/// Loads the image, rotates it 90 degrees clockwise, saves it next to the original and
/// returns the mean of its pixel values (all channels).
fn rotate_image_local(path: String) -> Result<f64, image::ImageError> {
    let path = PathBuf::from(path);
    let img = image::open(&path)?.to_rgb8();
    let rotated = image::imageops::rotate90(&img);
    rotated.save(rotated_path(&path))?;
    let raw = rotated.as_raw();
    let sum: u64 = raw.iter().map(|&v| u64::from(v)).sum();
    Ok(sum as f64 / raw.len() as f64)
}

/// The same work as a task: its `Err` becomes a task error.
#[mobula::remote]
fn rotate_image(path: String) -> Result<f64, image::ImageError> {
    rotate_image_local(path)
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

#[mobula::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = mobula::init()?;
    let dir = tempfile::tempdir()?;
    let paths: Vec<String> = (0..NUM_IMAGES)
        .map(|i| generate_image(dir.path(), i).map(|p| p.display().to_string()))
        .collect::<Result<_, _>>()?;
    println!(
        "generated {NUM_IMAGES} images of {SIZE}x{SIZE} in {}",
        dir.path().display()
    );

    // In parallel: one task per image.
    let (means, parallel_time) = timed(|| {
        let refs: Vec<_> = paths
            .iter()
            .map(|p| rotate_image::remote(&rt, p.clone()))
            .collect();
        rt.get_all(&refs)
    });
    let means = means?;
    for (path, mean) in paths.iter().zip(&means) {
        let name = Path::new(path).file_name().and_then(|n| n.to_str());
        println!("  {}: mean pixel value {mean:.3}", name.unwrap_or(path));
    }

    // Check the files the tasks wrote.
    for path in &paths {
        let rotated = image::open(rotated_path(Path::new(path)))?.to_rgb8();
        let original = image::open(path)?.to_rgb8();
        assert_eq!(rotated, image::imageops::rotate90(&original));
    }

    // Serially, on the driver.
    let (serial_means, serial_time) = timed(|| {
        paths
            .iter()
            .map(|p| rotate_image_local(p.clone()))
            .collect::<Result<Vec<f64>, _>>()
    });
    assert_eq!(serial_means?, means, "serial and parallel results differ");

    println!(
        "serial: {:.1} ms, parallel: {:.1} ms ({:.2}x)",
        serial_time.as_secs_f64() * 1e3,
        parallel_time.as_secs_f64() * 1e3,
        serial_time.as_secs_f64() / parallel_time.as_secs_f64()
    );

    mobula::shutdown();
    Ok(())
}
