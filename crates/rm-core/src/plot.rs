//! PNG line charts of training curves, with no dependencies.
//!
//! A [`Chart`] is a title, an x-axis label and one or more [`Panel`]s laid side by side (e.g.
//! "loss": train loss + dev loss; "accuracy": train accuracy + dev accuracy), each with its own
//! axes, "nice" ticks with numeric labels, light grid lines and a legend above the plot area.
//! Series take colours from a fixed palette by their index in the panel, so series `i` has the
//! same colour in every panel. Points whose x or y is NaN or infinite are skipped (the line joins
//! the finite points on either side); empty series and empty panels are drawn as empty axes.
//!
//! Everything is drawn by hand on an RGB raster ([`render_rgb`]): Bresenham lines with a
//! thickness, small square markers at the points of short series, and text in a built-in 5×7
//! bitmap font covering printable ASCII, scaled by an integer factor for large images. The
//! raster is encoded by [`encode_png`] (8-bit RGB, filter 0, zlib with "stored" deflate blocks,
//! CRC-32 and Adler-32 computed here) and [`write_png`] writes it atomically (`<path>.tmp`, then
//! a rename).

use std::path::Path;

use anyhow::{Result, bail};

use crate::checkpoint::write_bytes_atomically;

/// One curve: `(x, y)` points in drawing order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points; NaN or infinite coordinates are skipped.
    pub points: Vec<(f64, f64)>,
}

/// One plot area with its own axes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Panel {
    /// Shown above the panel.
    pub title: String,
    /// Curves; series `i` takes palette colour `i`.
    pub series: Vec<Series>,
}

/// A figure: panels side by side under a common title, sharing an x-axis label.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chart {
    /// Shown centred at the top (nothing when empty).
    pub title: String,
    /// Shown under every panel's x axis.
    pub x_label: String,
    /// Left to right.
    pub panels: Vec<Panel>,
}

/// Largest accepted side, in pixels.
const MAX_SIDE: u32 = 16_384;
/// Largest accepted image, in pixels.
const MAX_PIXELS: u64 = 64 << 20;

/// Renders `chart` and writes it as a `width`×`height` RGB PNG at `path`, atomically.
pub fn write_png(chart: &Chart, path: &Path, width: u32, height: u32) -> Result<()> {
    let rgb = render_rgb(chart, width, height)?;
    let png = encode_png(width, height, &rgb)?;
    write_bytes_atomically(path, &png)
}

/// Renders `chart` into a `width`×`height` raster: rows top to bottom, 3 bytes (R, G, B) a pixel.
pub fn render_rgb(chart: &Chart, width: u32, height: u32) -> Result<Vec<u8>> {
    check_size(width, height)?;
    Ok(render(chart, width, height).0.pixels)
}

/// Encodes an RGB raster (rows top to bottom, 3 bytes a pixel) as a PNG file.
pub fn encode_png(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>> {
    check_size(width, height)?;
    let row = width as usize * 3;
    if rgb.len() != row * height as usize {
        bail!(
            "raster has {} bytes, {width}x{height} RGB needs {}",
            rgb.len(),
            row * height as usize
        );
    }
    // Scanlines, each behind filter type 0 (None).
    let mut raw = Vec::with_capacity((row + 1) * height as usize);
    for line in rgb.chunks_exact(row) {
        raw.push(0);
        raw.extend_from_slice(line);
    }
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // Bit depth 8, colour type 2 (RGB), deflate, filter method 0, no interlace.
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let idat = zlib_stored(&raw);

    let mut png = Vec::with_capacity(idat.len() + 64);
    png.extend_from_slice(&PNG_SIGNATURE);
    push_chunk(&mut png, b"IHDR", &ihdr);
    push_chunk(&mut png, b"IDAT", &idat);
    push_chunk(&mut png, b"IEND", &[]);
    Ok(png)
}

fn check_size(width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 {
        bail!("image size {width}x{height}: both sides must be at least 1 pixel");
    }
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        bail!(
            "image size {width}x{height} is too large (at most {MAX_SIDE} a side, {MAX_PIXELS} pixels)"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// PNG / zlib / checksums
// ---------------------------------------------------------------------------------------------

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Appends a chunk: length, type, data, CRC-32 of type + data.
fn push_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let len = u32::try_from(data.len()).expect("PNG chunk longer than 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A zlib stream (RFC 1950) of "stored" deflate blocks (RFC 1951 §3.2.4): no compression.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 65_535;
    let blocks = data.len().div_ceil(BLOCK).max(1);
    let mut out = Vec::with_capacity(data.len() + blocks * 5 + 6);
    // CMF 0x78: deflate, 32 KiB window; FLG 0x01: no dictionary, (CMF·256 + FLG) % 31 == 0.
    out.extend_from_slice(&[0x78, 0x01]);
    if data.is_empty() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    let mut chunks = data.chunks(BLOCK).peekable();
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        // BFINAL in bit 0, BTYPE = 00 (stored) in bits 1-2; the rest of the byte is padding.
        out.push(u8::from(last));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

/// The CRC-32 table (reflected polynomial 0xEDB88320), built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

/// CRC-32 (ISO-HDLC, as PNG and zip use).
fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| {
        CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// Adler-32 (RFC 1950).
fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65_521;
    // 5552 bytes is the longest run whose sums cannot overflow u32 before reduction.
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(5552) {
        for &x in chunk {
            a += u32::from(x);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

// ---------------------------------------------------------------------------------------------
// Raster
// ---------------------------------------------------------------------------------------------

type Rgb = [u8; 3];

const BLACK: Rgb = [0, 0, 0];
const TEXT: Rgb = [30, 30, 30];
const AXIS: Rgb = [60, 60, 60];
const GRID: Rgb = [228, 228, 228];

/// Series colours (the "tab10" palette).
const PALETTE: [Rgb; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

fn series_colour(i: usize) -> Rgb {
    PALETTE[i % PALETTE.len()]
}

/// An axis-aligned rectangle of pixels: `x0..x1`, `y0..y1` (half-open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rect {
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
}

impl Rect {
    fn width(&self) -> i64 {
        self.x1 - self.x0
    }
    fn height(&self) -> i64 {
        self.y1 - self.y0
    }
    fn contains(&self, x: i64, y: i64) -> bool {
        x >= self.x0 && x < self.x1 && y >= self.y0 && y < self.y1
    }
}

struct Canvas {
    width: i64,
    height: i64,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: u32, height: u32) -> Self {
        Canvas {
            width: i64::from(width),
            height: i64::from(height),
            pixels: vec![255; width as usize * height as usize * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && x < self.width && y < self.height {
            let i = ((y * self.width + x) * 3) as usize;
            self.pixels[i..i + 3].copy_from_slice(&c);
        }
    }

    fn set_clipped(&mut self, x: i64, y: i64, c: Rgb, clip: Option<Rect>) {
        if clip.is_none_or(|r| r.contains(x, y)) {
            self.set(x, y, c);
        }
    }

    fn fill(&mut self, r: Rect, c: Rgb) {
        for y in r.y0.max(0)..r.y1.min(self.height) {
            for x in r.x0.max(0)..r.x1.min(self.width) {
                self.set(x, y, c);
            }
        }
    }

    fn hline(&mut self, x0: i64, x1: i64, y: i64, c: Rgb) {
        self.fill(
            Rect {
                x0,
                y0: y,
                x1,
                y1: y + 1,
            },
            c,
        );
    }

    fn vline(&mut self, x: i64, y0: i64, y1: i64, c: Rgb) {
        self.fill(
            Rect {
                x0: x,
                y0,
                x1: x + 1,
                y1,
            },
            c,
        );
    }

    /// A `t`×`t` square centred (as nearly as an even `t` allows) on `(x, y)`.
    fn dot(&mut self, x: i64, y: i64, t: i64, c: Rgb, clip: Option<Rect>) {
        let off = (t - 1) / 2;
        for dy in 0..t {
            for dx in 0..t {
                self.set_clipped(x - off + dx, y - off + dy, c, clip);
            }
        }
    }

    /// A Bresenham line of thickness `t`.
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), t: i64, c: Rgb, clip: Rect) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.dot(x, y, t, c, Some(clip));
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Draws `text` with its top-left corner at `(x, y)`, each font pixel `s`×`s`.
    fn text(&mut self, x: i64, y: i64, text: &str, s: i64, c: Rgb) {
        for (i, ch) in text.chars().enumerate() {
            let cols = glyph(ch);
            let gx = x + i as i64 * GLYPH_ADVANCE * s;
            for (col, bits) in cols.iter().enumerate() {
                for row in 0..GLYPH_HEIGHT {
                    if (bits >> row) & 1 != 0 {
                        for dy in 0..s {
                            for dx in 0..s {
                                self.set(gx + col as i64 * s + dx, y + row * s + dy, c);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Width of `text` in pixels at scale `s` (without the trailing gap of the last glyph).
fn text_width(text: &str, s: i64) -> i64 {
    let n = text.chars().count() as i64;
    if n == 0 {
        0
    } else {
        (n * GLYPH_ADVANCE - 1) * s
    }
}

// ---------------------------------------------------------------------------------------------
// Font: 5×7 glyphs for printable ASCII, one byte a column, bit 0 = top row.
// ---------------------------------------------------------------------------------------------

const GLYPH_HEIGHT: i64 = 7;
/// Five columns plus one blank.
const GLYPH_ADVANCE: i64 = 6;

#[rustfmt::skip]
const FONT: [[u8; 5]; 95] = [
    [0x00, 0x00, 0x00, 0x00, 0x00], // ' '
    [0x00, 0x00, 0x5f, 0x00, 0x00], // !
    [0x00, 0x07, 0x00, 0x07, 0x00], // "
    [0x14, 0x7f, 0x14, 0x7f, 0x14], // #
    [0x24, 0x2a, 0x7f, 0x2a, 0x12], // $
    [0x23, 0x13, 0x08, 0x64, 0x62], // %
    [0x36, 0x49, 0x55, 0x22, 0x50], // &
    [0x00, 0x05, 0x03, 0x00, 0x00], // '
    [0x00, 0x1c, 0x22, 0x41, 0x00], // (
    [0x00, 0x41, 0x22, 0x1c, 0x00], // )
    [0x08, 0x2a, 0x1c, 0x2a, 0x08], // *
    [0x08, 0x08, 0x3e, 0x08, 0x08], // +
    [0x00, 0x50, 0x30, 0x00, 0x00], // ,
    [0x08, 0x08, 0x08, 0x08, 0x08], // -
    [0x00, 0x60, 0x60, 0x00, 0x00], // .
    [0x20, 0x10, 0x08, 0x04, 0x02], // /
    [0x3e, 0x51, 0x49, 0x45, 0x3e], // 0
    [0x00, 0x42, 0x7f, 0x40, 0x00], // 1
    [0x42, 0x61, 0x51, 0x49, 0x46], // 2
    [0x21, 0x41, 0x45, 0x4b, 0x31], // 3
    [0x18, 0x14, 0x12, 0x7f, 0x10], // 4
    [0x27, 0x45, 0x45, 0x45, 0x39], // 5
    [0x3c, 0x4a, 0x49, 0x49, 0x30], // 6
    [0x01, 0x71, 0x09, 0x05, 0x03], // 7
    [0x36, 0x49, 0x49, 0x49, 0x36], // 8
    [0x06, 0x49, 0x49, 0x29, 0x1e], // 9
    [0x00, 0x36, 0x36, 0x00, 0x00], // :
    [0x00, 0x56, 0x36, 0x00, 0x00], // ;
    [0x08, 0x14, 0x22, 0x41, 0x00], // <
    [0x14, 0x14, 0x14, 0x14, 0x14], // =
    [0x00, 0x41, 0x22, 0x14, 0x08], // >
    [0x02, 0x01, 0x51, 0x09, 0x06], // ?
    [0x32, 0x49, 0x79, 0x41, 0x3e], // @
    [0x7e, 0x11, 0x11, 0x11, 0x7e], // A
    [0x7f, 0x49, 0x49, 0x49, 0x36], // B
    [0x3e, 0x41, 0x41, 0x41, 0x22], // C
    [0x7f, 0x41, 0x41, 0x22, 0x1c], // D
    [0x7f, 0x49, 0x49, 0x49, 0x41], // E
    [0x7f, 0x09, 0x09, 0x09, 0x01], // F
    [0x3e, 0x41, 0x49, 0x49, 0x7a], // G
    [0x7f, 0x08, 0x08, 0x08, 0x7f], // H
    [0x00, 0x41, 0x7f, 0x41, 0x00], // I
    [0x20, 0x40, 0x41, 0x3f, 0x01], // J
    [0x7f, 0x08, 0x14, 0x22, 0x41], // K
    [0x7f, 0x40, 0x40, 0x40, 0x40], // L
    [0x7f, 0x02, 0x0c, 0x02, 0x7f], // M
    [0x7f, 0x04, 0x08, 0x10, 0x7f], // N
    [0x3e, 0x41, 0x41, 0x41, 0x3e], // O
    [0x7f, 0x09, 0x09, 0x09, 0x06], // P
    [0x3e, 0x41, 0x51, 0x21, 0x5e], // Q
    [0x7f, 0x09, 0x19, 0x29, 0x46], // R
    [0x46, 0x49, 0x49, 0x49, 0x31], // S
    [0x01, 0x01, 0x7f, 0x01, 0x01], // T
    [0x3f, 0x40, 0x40, 0x40, 0x3f], // U
    [0x1f, 0x20, 0x40, 0x20, 0x1f], // V
    [0x3f, 0x40, 0x38, 0x40, 0x3f], // W
    [0x63, 0x14, 0x08, 0x14, 0x63], // X
    [0x07, 0x08, 0x70, 0x08, 0x07], // Y
    [0x61, 0x51, 0x49, 0x45, 0x43], // Z
    [0x00, 0x7f, 0x41, 0x41, 0x00], // [
    [0x02, 0x04, 0x08, 0x10, 0x20], // \
    [0x00, 0x41, 0x41, 0x7f, 0x00], // ]
    [0x04, 0x02, 0x01, 0x02, 0x04], // ^
    [0x40, 0x40, 0x40, 0x40, 0x40], // _
    [0x00, 0x01, 0x02, 0x04, 0x00], // `
    [0x20, 0x54, 0x54, 0x54, 0x78], // a
    [0x7f, 0x48, 0x44, 0x44, 0x38], // b
    [0x38, 0x44, 0x44, 0x44, 0x20], // c
    [0x38, 0x44, 0x44, 0x48, 0x7f], // d
    [0x38, 0x54, 0x54, 0x54, 0x18], // e
    [0x08, 0x7e, 0x09, 0x01, 0x02], // f
    [0x0c, 0x52, 0x52, 0x52, 0x3e], // g
    [0x7f, 0x08, 0x04, 0x04, 0x78], // h
    [0x00, 0x44, 0x7d, 0x40, 0x00], // i
    [0x20, 0x40, 0x44, 0x3d, 0x00], // j
    [0x7f, 0x10, 0x28, 0x44, 0x00], // k
    [0x00, 0x41, 0x7f, 0x40, 0x00], // l
    [0x7c, 0x04, 0x18, 0x04, 0x78], // m
    [0x7c, 0x08, 0x04, 0x04, 0x78], // n
    [0x38, 0x44, 0x44, 0x44, 0x38], // o
    [0x7c, 0x14, 0x14, 0x14, 0x08], // p
    [0x08, 0x14, 0x14, 0x18, 0x7c], // q
    [0x7c, 0x08, 0x04, 0x04, 0x08], // r
    [0x48, 0x54, 0x54, 0x54, 0x20], // s
    [0x04, 0x3f, 0x44, 0x40, 0x20], // t
    [0x3c, 0x40, 0x40, 0x20, 0x7c], // u
    [0x1c, 0x20, 0x40, 0x20, 0x1c], // v
    [0x3c, 0x40, 0x30, 0x40, 0x3c], // w
    [0x44, 0x28, 0x10, 0x28, 0x44], // x
    [0x0c, 0x50, 0x50, 0x50, 0x3c], // y
    [0x44, 0x64, 0x54, 0x4c, 0x44], // z
    [0x00, 0x08, 0x36, 0x41, 0x00], // {
    [0x00, 0x00, 0x7f, 0x00, 0x00], // |
    [0x00, 0x41, 0x36, 0x08, 0x00], // }
    [0x08, 0x04, 0x08, 0x10, 0x08], // ~
];

/// A hollow box for characters outside printable ASCII.
const MISSING_GLYPH: [u8; 5] = [0x7f, 0x41, 0x41, 0x41, 0x7f];

fn glyph(c: char) -> &'static [u8; 5] {
    match c {
        ' '..='~' => &FONT[c as usize - 0x20],
        _ => &MISSING_GLYPH,
    }
}

// ---------------------------------------------------------------------------------------------
// Axes and ticks
// ---------------------------------------------------------------------------------------------

/// A linear axis: the drawn range and its tick values.
#[derive(Clone, Debug, PartialEq)]
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
    ticks: Vec<f64>,
}

impl Axis {
    /// Ticks at a "nice" step (1, 2 or 5 × 10ᵏ) giving about `target` intervals; the range is
    /// widened to whole steps. An empty or degenerate data range is widened first.
    fn nice(min: f64, max: f64, target: usize) -> Axis {
        Self::build(min, max, target, false)
    }

    /// As [`Axis::nice`], but the range stays the data's (ticks only where they fall inside).
    fn tight(min: f64, max: f64, target: usize) -> Axis {
        Self::build(min, max, target, true)
    }

    fn build(min: f64, max: f64, target: usize, tight: bool) -> Axis {
        let (mut min, mut max) = if min.is_finite() && max.is_finite() && min <= max {
            (min, max)
        } else {
            (0.0, 1.0)
        };
        if max - min <= f64::EPSILON * min.abs().max(max.abs()) {
            let pad = if min == 0.0 { 0.5 } else { min.abs() * 0.05 };
            min -= pad;
            max += pad;
        }
        if !(max - min).is_finite() {
            // Beyond f64's range: scale down and try again would be overkill for curves.
            return Axis {
                lo: min,
                hi: max,
                step: f64::INFINITY,
                ticks: vec![],
            };
        }
        let raw = (max - min) / target.max(1) as f64;
        let mag = 10f64.powf(raw.log10().floor());
        let frac = raw / mag;
        let nice = if frac <= 1.0 {
            1.0
        } else if frac <= 2.0 {
            2.0
        } else if frac <= 5.0 {
            5.0
        } else {
            10.0
        };
        let step = nice * mag;
        let (k0, k1) = if tight {
            // Tolerate rounding: a tick a hair outside the range still counts.
            ((min / step - 1e-9).ceil(), (max / step + 1e-9).floor())
        } else {
            ((min / step).floor(), (max / step).ceil())
        };
        let ticks = (0..=(k1 - k0).max(-1.0) as i64)
            .map(|i| {
                let v = (k0 + i as f64) * step;
                if v.abs() < step * 1e-9 { 0.0 } else { v }
            })
            .filter(|&v| !tight || (min - step * 1e-9..=max + step * 1e-9).contains(&v))
            .collect();
        let (lo, hi) = if tight {
            (min, max)
        } else {
            (k0 * step, k1 * step)
        };
        Axis {
            lo,
            hi,
            step,
            ticks,
        }
    }

    /// Tick label: fixed-point with as many decimals as the step needs, or scientific for very
    /// large or very small magnitudes.
    fn label(&self, v: f64) -> String {
        if v == 0.0 {
            return "0".to_string();
        }
        let step_exp = (self.step.log10() + 1e-9).floor() as i32;
        let mag = self.lo.abs().max(self.hi.abs());
        let mag_exp = (mag.log10() + 1e-9).floor() as i32;
        if mag_exp >= 6 || mag_exp <= -4 {
            let decimals = (mag_exp - step_exp).clamp(0, 6) as usize;
            format!("{v:.decimals$e}")
        } else {
            let decimals = (-step_exp).clamp(0, 10) as usize;
            format!("{v:.decimals$}")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layout and drawing
// ---------------------------------------------------------------------------------------------

/// Where a panel's data went: the plot rectangle and the axes mapped onto it.
#[derive(Clone, Debug)]
struct PanelFrame {
    plot: Rect,
    x: Axis,
    y: Axis,
}

impl PanelFrame {
    /// Pixel column of data `x`.
    fn px(&self, x: f64) -> f64 {
        self.plot.x0 as f64
            + (x - self.x.lo) / (self.x.hi - self.x.lo) * (self.plot.width() - 1) as f64
    }
    /// Pixel row of data `y`.
    fn py(&self, y: f64) -> f64 {
        (self.plot.y1 - 1) as f64
            - (y - self.y.lo) / (self.y.hi - self.y.lo) * (self.plot.height() - 1) as f64
    }
}

/// Finite points of a series.
fn finite_points(s: &Series) -> impl Iterator<Item = (f64, f64)> + '_ {
    s.points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
}

/// Data bounds (min x, max x, min y, max y) over the finite points of `panel`; NaN when none.
fn bounds(panel: &Panel) -> (f64, f64, f64, f64) {
    let mut b = (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    for (x, y) in panel.series.iter().flat_map(finite_points) {
        b.0 = b.0.min(x);
        b.1 = b.1.max(x);
        b.2 = b.2.min(y);
        b.3 = b.3.max(y);
    }
    b
}

/// Legend entries laid out in lines across `width` pixels: `(line, x offset)` per series.
fn legend_layout(panel: &Panel, width: i64, s: i64) -> (Vec<(i64, i64)>, i64) {
    let swatch = 14 * s;
    let gap = 12 * s;
    let mut placed = Vec::with_capacity(panel.series.len());
    let (mut line, mut x) = (0i64, 0i64);
    for series in &panel.series {
        let w = swatch + 4 * s + text_width(&series.name, s);
        if x > 0 && x + w > width {
            line += 1;
            x = 0;
        }
        placed.push((line, x));
        x += w + gap;
    }
    let lines = if panel.series.is_empty() { 0 } else { line + 1 };
    (placed, lines)
}

/// Text scale for an image size: 1 up to about 900×600, then larger.
fn text_scale(width: u32, height: u32) -> i64 {
    i64::from((width / 900).min(height / 600).clamp(1, 4))
}

/// Draws `chart`; also returns each panel's frame (for tests).
fn render(chart: &Chart, width: u32, height: u32) -> (Canvas, Vec<Option<PanelFrame>>) {
    let mut canvas = Canvas::new(width, height);
    let s = text_scale(width, height);
    let line_h = (GLYPH_HEIGHT + 4) * s;
    let (w, h) = (i64::from(width), i64::from(height));

    let mut top = 0;
    if !chart.title.is_empty() {
        let tw = text_width(&chart.title, s);
        canvas.text((w - tw) / 2, 6 * s, &chart.title, s, BLACK);
        top = 6 * s + line_h + 2 * s;
    }

    let n = chart.panels.len() as i64;
    let mut frames = Vec::with_capacity(chart.panels.len());
    for (i, panel) in chart.panels.iter().enumerate() {
        let i = i as i64;
        let area = Rect {
            x0: w * i / n,
            y0: top,
            x1: w * (i + 1) / n,
            y1: h,
        };
        frames.push(draw_panel(&mut canvas, panel, &chart.x_label, area, s));
    }
    (canvas, frames)
}

/// Draws one panel inside `area`; `None` when the area is too small for a plot.
fn draw_panel(
    canvas: &mut Canvas,
    panel: &Panel,
    x_label: &str,
    area: Rect,
    s: i64,
) -> Option<PanelFrame> {
    let line_h = (GLYPH_HEIGHT + 4) * s;
    let pad = 8 * s;
    let tick_len = 4 * s;

    // Panel title.
    let mut y = area.y0 + 4 * s;
    if !panel.title.is_empty() {
        let tw = text_width(&panel.title, s);
        canvas.text(area.x0 + (area.width() - tw) / 2, y, &panel.title, s, BLACK);
        y += line_h;
    }

    // Legend lines, laid out over the panel's width less padding.
    let legend_w = area.width() - 2 * pad;
    let (legend, legend_lines) = legend_layout(panel, legend_w.max(1), s);
    let legend_y = y + 2 * s;
    y = legend_y + legend_lines * line_h + 4 * s;

    // Bottom: tick labels, then the x label.
    let x_label_h = if x_label.is_empty() { 0 } else { line_h };
    let bottom = tick_len + 2 * s + line_h + x_label_h + 2 * s;
    let plot_y0 = y;
    let plot_y1 = area.y1 - bottom;

    let (xmin, xmax, ymin, ymax) = bounds(panel);
    let plot_h = plot_y1 - plot_y0;
    let y_target = (plot_h / (40 * s)).clamp(2, 8) as usize;
    let yaxis = Axis::nice(ymin, ymax, y_target);
    let y_labels: Vec<String> = yaxis.ticks.iter().map(|&v| yaxis.label(v)).collect();
    let y_label_w = y_labels.iter().map(|l| text_width(l, s)).max().unwrap_or(0);
    let plot_x0 = area.x0 + pad + y_label_w + 2 * s + tick_len;
    let plot_x1 = area.x1 - pad - 4 * s;
    let plot_w = plot_x1 - plot_x0;
    if plot_w < 8 || plot_h < 8 {
        return None;
    }
    let x_target = (plot_w / (70 * s)).clamp(2, 8) as usize;
    let xaxis = Axis::tight(xmin, xmax, x_target);
    let frame = PanelFrame {
        plot: Rect {
            x0: plot_x0,
            y0: plot_y0,
            x1: plot_x1,
            y1: plot_y1,
        },
        x: xaxis,
        y: yaxis,
    };
    let plot = frame.plot;

    // Legend: a short thick line in the series colour, then the name.
    for (k, (series, &(line, dx))) in panel.series.iter().zip(&legend).enumerate() {
        let lx = area.x0 + pad + dx;
        let ly = legend_y + line * line_h;
        let mid = ly + GLYPH_HEIGHT * s / 2;
        canvas.fill(
            Rect {
                x0: lx,
                y0: mid - s,
                x1: lx + 14 * s,
                y1: mid + s + 1,
            },
            series_colour(k),
        );
        canvas.text(lx + 18 * s, ly, &series.name, s, TEXT);
    }

    // Grid lines, ticks and tick labels.
    let x_tick_px: Vec<i64> = frame
        .x
        .ticks
        .iter()
        .map(|&v| frame.px(v).round() as i64)
        .collect();
    let y_tick_px: Vec<i64> = frame
        .y
        .ticks
        .iter()
        .map(|&v| frame.py(v).round() as i64)
        .collect();
    for &px in &x_tick_px {
        canvas.vline(px, plot.y0, plot.y1, GRID);
    }
    for &py in &y_tick_px {
        canvas.hline(plot.x0, plot.x1, py, GRID);
    }
    for (&py, label) in y_tick_px.iter().zip(&y_labels) {
        canvas.hline(plot.x0 - tick_len, plot.x0, py, AXIS);
        let lw = text_width(label, s);
        canvas.text(
            plot.x0 - tick_len - 2 * s - lw,
            py - GLYPH_HEIGHT * s / 2,
            label,
            s,
            TEXT,
        );
    }
    // X labels, skipping any that would overlap the previous one.
    let mut last_right = i64::MIN;
    for (&px, &v) in x_tick_px.iter().zip(&frame.x.ticks) {
        canvas.vline(px, plot.y1, plot.y1 + tick_len, AXIS);
        let label = frame.x.label(v);
        let lw = text_width(&label, s);
        let lx = px - lw / 2;
        if lx > last_right + 3 * s {
            canvas.text(lx, plot.y1 + tick_len + 2 * s, &label, s, TEXT);
            last_right = lx + lw;
        }
    }
    if !x_label.is_empty() {
        let lw = text_width(x_label, s);
        canvas.text(
            plot.x0 + (plot.width() - lw) / 2,
            plot.y1 + tick_len + 2 * s + line_h,
            x_label,
            s,
            TEXT,
        );
    }

    // Series: lines through the finite points, with markers when the series is short.
    let thickness = s + 1;
    for (k, series) in panel.series.iter().enumerate() {
        let colour = series_colour(k);
        let pts: Vec<(i64, i64)> = finite_points(series)
            .map(|(x, y)| (frame.px(x).round() as i64, frame.py(y).round() as i64))
            .collect();
        for pair in pts.windows(2) {
            canvas.line(pair[0], pair[1], thickness, colour, plot);
        }
        if pts.len() <= 64 {
            for &(x, y) in &pts {
                canvas.dot(x, y, 2 * thickness + 1, colour, Some(plot));
            }
        }
    }

    // Axes on top: left and bottom edges of the plot area.
    canvas.vline(plot.x0 - 1, plot.y0, plot.y1 + 1, AXIS);
    canvas.hline(plot.x0 - 1, plot.x1, plot.y1, AXIS);
    Some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a PNG into `(type, data)` chunks, checking the signature and every CRC.
    fn chunks(png: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
        assert_eq!(&png[..8], &PNG_SIGNATURE, "signature");
        let mut out = vec![];
        let mut at = 8;
        while at < png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let kind: [u8; 4] = png[at + 4..at + 8].try_into().unwrap();
            let data = png[at + 8..at + 8 + len].to_vec();
            let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
            assert_eq!(crc, crc32(&png[at + 4..at + 8 + len]), "CRC of {kind:?}");
            out.push((kind, data));
            at += 12 + len;
        }
        assert_eq!(at, png.len(), "trailing bytes");
        out
    }

    /// Inflates a zlib stream made only of stored blocks, checking the header and Adler-32.
    fn inflate_stored(z: &[u8]) -> Vec<u8> {
        assert_eq!(z[0] & 0x0f, 8, "deflate");
        assert_eq!(((u16::from(z[0]) << 8) | u16::from(z[1])) % 31, 0, "FCHECK");
        assert_eq!(z[1] & 0x20, 0, "no preset dictionary");
        let mut out = vec![];
        let mut at = 2;
        loop {
            let head = z[at];
            assert_eq!(head >> 1 & 3, 0, "stored block");
            let len = u16::from_le_bytes([z[at + 1], z[at + 2]]);
            let nlen = u16::from_le_bytes([z[at + 3], z[at + 4]]);
            assert_eq!(len, !nlen, "NLEN");
            out.extend_from_slice(&z[at + 5..at + 5 + len as usize]);
            at += 5 + len as usize;
            if head & 1 == 1 {
                break;
            }
        }
        let adler = u32::from_be_bytes(z[at..at + 4].try_into().unwrap());
        assert_eq!(adler, adler32(&out), "Adler-32");
        assert_eq!(at + 4, z.len(), "bytes after the Adler-32");
        out
    }

    /// Decodes a PNG this module wrote: `(width, height, rgb)`.
    fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
        let chunks = chunks(png);
        let kinds: Vec<&[u8; 4]> = chunks.iter().map(|(k, _)| k).collect();
        assert_eq!(kinds.first(), Some(&b"IHDR"));
        assert_eq!(kinds.last(), Some(&b"IEND"));
        assert!(chunks.last().unwrap().1.is_empty(), "IEND is empty");
        let ihdr = &chunks[0].1;
        assert_eq!(ihdr.len(), 13);
        let width = u32::from_be_bytes(ihdr[0..4].try_into().unwrap());
        let height = u32::from_be_bytes(ihdr[4..8].try_into().unwrap());
        assert_eq!(&ihdr[8..], &[8, 2, 0, 0, 0], "8-bit RGB, no interlace");
        let z: Vec<u8> = chunks
            .iter()
            .filter(|(k, _)| k == b"IDAT")
            .flat_map(|(_, d)| d.iter().copied())
            .collect();
        let raw = inflate_stored(&z);
        let row = width as usize * 3;
        assert_eq!(raw.len(), (row + 1) * height as usize, "scanline bytes");
        let mut rgb = Vec::with_capacity(row * height as usize);
        for line in raw.chunks_exact(row + 1) {
            assert_eq!(line[0], 0, "filter type None");
            rgb.extend_from_slice(&line[1..]);
        }
        (width, height, rgb)
    }

    fn curves() -> Chart {
        let train: Vec<(f64, f64)> = (0..=100)
            .map(|i| (f64::from(i), 0.7 * (-f64::from(i) / 40.0).exp() + 0.1))
            .collect();
        let mut dev: Vec<(f64, f64)> = (0..=5)
            .map(|i| (f64::from(i * 20), 0.75 * (-f64::from(i) / 2.5).exp() + 0.15))
            .collect();
        dev.push((110.0, f64::NAN));
        dev.push((f64::INFINITY, 0.3));
        Chart {
            title: "rm-minilm-hh: Bradley-Terry, lr 5e-5".into(),
            x_label: "optimizer step".into(),
            panels: vec![
                Panel {
                    title: "loss".into(),
                    series: vec![
                        Series {
                            name: "train loss".into(),
                            points: train.clone(),
                        },
                        Series {
                            name: "dev loss".into(),
                            points: dev,
                        },
                    ],
                },
                Panel {
                    title: "accuracy".into(),
                    series: vec![
                        Series {
                            name: "train acc".into(),
                            points: train.iter().map(|&(x, y)| (x, 1.0 - y)).collect(),
                        },
                        Series {
                            name: "dev acc (none yet)".into(),
                            points: vec![],
                        },
                    ],
                },
            ],
        }
    }

    #[test]
    fn known_checksums() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
        assert_eq!(adler32(b""), 1);
        // Long input: the deferred modulo must not overflow.
        let big = vec![0xffu8; 100_000];
        let (mut a, mut b) = (1u64, 0u64);
        for &x in &big {
            a = (a + u64::from(x)) % 65_521;
            b = (b + a) % 65_521;
        }
        assert_eq!(u64::from(adler32(&big)), (b << 16) | a);
        // The IEND chunk's well-known CRC.
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
    }

    #[test]
    fn zlib_stored_round_trips_across_blocks() {
        for n in [0usize, 1, 65_535, 65_536, 200_000] {
            let data: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
            assert_eq!(inflate_stored(&zlib_stored(&data)), data, "{n} bytes");
        }
    }

    #[test]
    fn png_structure_and_size() {
        let chart = curves();
        let png = encode_png(640, 360, &render_rgb(&chart, 640, 360).unwrap()).unwrap();
        let chunks = chunks(&png);
        assert_eq!(&chunks[0].0, b"IHDR");
        assert_eq!(&chunks.last().unwrap().0, b"IEND");
        let (w, h, rgb) = decode(&png);
        assert_eq!((w, h), (640, 360));
        assert_eq!(rgb.len(), 640 * 360 * 3);
        // Something was drawn in both series colours of the loss panel.
        let has = |c: Rgb| rgb.chunks_exact(3).any(|p| p == c);
        assert!(has(series_colour(0)) && has(series_colour(1)));
    }

    #[test]
    fn write_png_is_atomic_and_decodes() {
        let dir = std::env::temp_dir().join(format!("plumb-plot-{}", std::process::id()));
        let path = dir.join("curves.png");
        write_png(&curves(), &path, 1000, 420).unwrap();
        let (w, h, _) = decode(&std::fs::read(&path).unwrap());
        assert_eq!((w, h), (1000, 420));
        assert!(!dir.join("curves.png.tmp").exists());
        // Large sizes scale the text; odd sizes and a single pixel work too.
        for (w, h) in [(1920, 1200), (333, 77), (1, 1)] {
            write_png(&curves(), &path, w, h).unwrap();
            assert_eq!(decode(&std::fs::read(&path).unwrap()).0, w);
        }
        std::fs::remove_dir_all(&dir).ok();
        assert!(write_png(&curves(), &path, 0, 10).is_err());
        assert!(encode_png(2, 2, &[0; 11]).is_err());
    }

    #[test]
    fn empty_charts_render() {
        for chart in [
            Chart::default(),
            Chart {
                title: "nothing".into(),
                x_label: String::new(),
                panels: vec![Panel::default(), Panel::default()],
            },
            Chart {
                title: String::new(),
                x_label: "step".into(),
                panels: vec![Panel {
                    title: "only NaN".into(),
                    series: vec![Series {
                        name: "nan".into(),
                        points: vec![(f64::NAN, 1.0), (0.0, f64::NEG_INFINITY)],
                    }],
                }],
            },
        ] {
            let rgb = render_rgb(&chart, 300, 200).unwrap();
            let (_, _, back) = decode(&encode_png(300, 200, &rgb).unwrap());
            assert_eq!(back, rgb);
        }
    }

    #[test]
    fn horizontal_series_lies_on_its_row() {
        let chart = Chart {
            title: "flat".into(),
            x_label: "step".into(),
            panels: vec![Panel {
                title: "p".into(),
                series: vec![
                    // Sets the ranges: x 0..10, y 0..1.
                    Series {
                        name: "range".into(),
                        points: vec![(0.0, 0.0), (10.0, 1.0)],
                    },
                    Series {
                        name: "flat".into(),
                        points: (0..=10).map(|i| (f64::from(i), 0.25)).collect(),
                    },
                ],
            }],
        };
        let (w, h) = (400u32, 300u32);
        let (canvas, frames) = render(&chart, w, h);
        let frame = frames[0].clone().expect("a plot area");
        assert_eq!((frame.y.lo, frame.y.hi), (0.0, 1.0));
        let row = frame.py(0.25).round() as i64;
        let colour = series_colour(1);
        let at = |x: i64, y: i64| {
            let i = ((y * i64::from(w) + x) * 3) as usize;
            [canvas.pixels[i], canvas.pixels[i + 1], canvas.pixels[i + 2]]
        };
        let plot = frame.plot;
        // The line covers its row across the plot (the other series crosses it once).
        let on_row = (plot.x0..plot.x1).filter(|&x| at(x, row) == colour).count() as i64;
        assert!(
            on_row >= plot.width() * 9 / 10,
            "{on_row} of {} pixels on row {row}",
            plot.width()
        );
        // And every pixel of its colour inside the plot lies within a marker's reach of the row.
        // Line dots are 2 px (rows row..row+1); markers 5 px (rows row-2..row+2).
        let reach = 2;
        for y in plot.y0..plot.y1 {
            for x in plot.x0..plot.x1 {
                if at(x, y) == colour {
                    assert!((y - row).abs() <= reach, "pixel at ({x}, {y}), row {row}");
                }
            }
        }
        // The row is where the mapping says: a quarter of the way up from the bottom.
        let expect = (plot.y1 - 1) as f64 - 0.25 * (plot.height() - 1) as f64;
        assert!((row as f64 - expect).abs() <= 0.5);
    }

    #[test]
    fn nice_ticks_and_labels() {
        let a = Axis::nice(0.13, 0.71, 5);
        assert!((a.step - 0.2).abs() < 1e-12);
        assert!(a.lo.abs() < 1e-12 && (a.hi - 0.8).abs() < 1e-12);
        let a = Axis::nice(0.13, 0.71, 6);
        assert!((a.step - 0.1).abs() < 1e-12);
        assert!((a.lo - 0.1).abs() < 1e-12 && (a.hi - 0.8).abs() < 1e-12);
        assert_eq!(a.label(a.ticks[2]), "0.3");
        let a = Axis::nice(0.0, 1800.0, 4);
        assert!((a.step - 500.0).abs() < 1e-9);
        assert_eq!(
            a.ticks.iter().map(|&v| a.label(v)).collect::<Vec<_>>(),
            ["0", "500", "1000", "1500", "2000"]
        );
        let a = Axis::nice(0.0, 5e-5, 5);
        assert_eq!(a.label(a.ticks[1]), "1e-5");
        let a = Axis::nice(-1.0, 1.0, 4);
        assert!(a.ticks.contains(&0.0));
        assert_eq!(a.label(-0.5), "-0.5");
        // Degenerate and empty ranges still give an axis.
        let a = Axis::nice(0.69, 0.69, 5);
        assert!(a.lo < 0.69 && a.hi > 0.69 && a.ticks.len() >= 2);
        let a = Axis::nice(f64::NAN, f64::NAN, 5);
        assert_eq!((a.lo, a.hi), (0.0, 1.0));
        // Tight: the data's own range, ticks inside it.
        let a = Axis::tight(3.0, 112.0, 6);
        assert_eq!((a.lo, a.hi, a.step), (3.0, 112.0, 20.0));
        assert_eq!(a.ticks, [20.0, 40.0, 60.0, 80.0, 100.0]);
        let a = Axis::tight(0.0, 100.0, 5);
        assert_eq!(a.ticks, [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
    }

    #[test]
    fn font_covers_printable_ascii() {
        assert_eq!(FONT.len(), ('~' as usize) - (' ' as usize) + 1);
        for c in '!'..='~' {
            assert!(glyph(c).iter().any(|&b| b != 0), "{c:?} is blank");
            assert!(
                glyph(c).iter().all(|&b| b < 0x80),
                "{c:?} is taller than 7 rows"
            );
        }
        assert_eq!(glyph('é'), &MISSING_GLYPH);
    }
}
