//! The procedurally generated dataset: eight shapes (the content, which decides the label)
//! rendered under controllable appearances (the domain).
//!
//! A [`Scene`] holds everything about one image that is *content* or in-domain variation:
//! the shape, its position, size and rotation, and the jittered source colours. [`render`]
//! draws a scene in a [`Domain`]: the source domain draws it as it is; every shifted domain
//! changes only the appearance. Test sets render the *same* scenes in every domain, so a change
//! of accuracy between domains is due to appearance alone.

use std::f32::consts::PI;

/// Side of the square images, in pixels.
pub const IMAGE_SIZE: usize = 32;
/// Colour channels.
pub const CHANNELS: usize = 3;
/// Floats per image (`CHANNELS * IMAGE_SIZE * IMAGE_SIZE`, channel-major).
pub const IMAGE_LEN: usize = CHANNELS * IMAGE_SIZE * IMAGE_SIZE;

/// Class names; the index is the label.
pub const CLASSES: [&str; 8] = [
    "disc", "ring", "square", "frame", "triangle", "plus", "diamond", "star",
];

/// A small deterministic random number generator (PCG-XSH-RR 64/32).
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    const MULTIPLIER: u64 = 6_364_136_223_846_793_005;
    const INCREMENT: u64 = 1_442_695_040_888_963_407;

    /// A generator seeded with `seed`; different seeds give unrelated streams.
    pub fn new(seed: u64) -> Self {
        let mut rng = Self {
            state: seed.wrapping_add(Self::INCREMENT),
        };
        rng.next_u32();
        rng.state = rng.state.wrapping_add(seed.rotate_left(32));
        rng.next_u32();
        rng
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old
            .wrapping_mul(Self::MULTIPLIER)
            .wrapping_add(Self::INCREMENT);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        xorshifted.rotate_right((old >> 59) as u32)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }

    /// Uniform in `[low, high)`.
    pub fn uniform(&mut self, low: f32, high: f32) -> f32 {
        low + (high - low) * self.unit()
    }

    /// Uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u32() as u64 * n as u64) >> 32) as usize
    }

    /// `-1.0` or `1.0` with equal probability.
    pub fn sign(&mut self) -> f32 {
        if self.next_u32() & 1 == 0 { -1.0 } else { 1.0 }
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.unit().max(1e-7);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// An appearance domain. [`Domain::Source`] is the training domain; the others are shifts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// Light, warm shapes on a dark blue-grey background, small colour jitter.
    Source,
    /// Per-image, per-channel gain and offset (a white-balance / colour cast change).
    ColourCast,
    /// Per-image brightness offset (up or down), clipped to `[0, 1]`.
    Brightness,
    /// Per-image contrast reduction around the image mean.
    Contrast,
    /// Negative image: `1 - x`.
    Inverted,
    /// New random colours for shape and background, each overlaid with a random texture
    /// (stripes, checks or dots); the shape stays lighter than the background.
    Texture,
    /// Strong per-pixel Gaussian noise.
    Noise,
}

impl Domain {
    /// Every domain, source first.
    pub const ALL: [Domain; 7] = [
        Domain::Source,
        Domain::ColourCast,
        Domain::Brightness,
        Domain::Contrast,
        Domain::Inverted,
        Domain::Texture,
        Domain::Noise,
    ];

    /// The shifted domains.
    pub fn shifts() -> &'static [Domain] {
        &Self::ALL[1..]
    }

    /// Short name used in tables, CSV files and the chart.
    pub fn name(self) -> &'static str {
        match self {
            Domain::Source => "in-domain",
            Domain::ColourCast => "colour",
            Domain::Brightness => "brightness",
            Domain::Contrast => "contrast",
            Domain::Inverted => "inverted",
            Domain::Texture => "texture",
            Domain::Noise => "noise",
        }
    }

    /// Whether the shift is a per-image affine change of the pixel values (up to clipping),
    /// the kind that instance normalisation removes.
    pub fn is_affine(self) -> bool {
        matches!(
            self,
            Domain::ColourCast | Domain::Brightness | Domain::Contrast | Domain::Inverted
        )
    }
}

/// Everything about one image that does not depend on the domain.
#[derive(Clone, Debug)]
pub struct Scene {
    /// Class index into [`CLASSES`].
    pub label: usize,
    /// Shape centre, in image units (`0..1`).
    pub centre: (f32, f32),
    /// Shape radius, in image units.
    pub radius: f32,
    /// Rotation in radians.
    pub angle: f32,
    /// Source foreground colour.
    pub fg: [f32; 3],
    /// Source background colour.
    pub bg: [f32; 3],
    /// Background shading: direction (unit vector) and amplitude.
    pub shading: ((f32, f32), f32),
    /// Seed of the per-image appearance randomness (shift parameters, textures, noise).
    pub seed: u64,
}

impl Scene {
    /// A random scene of class `label`.
    pub fn random(label: usize, rng: &mut Rng) -> Self {
        let jitter = |rng: &mut Rng, base: [f32; 3], amount: f32| {
            let common = rng.uniform(-amount, amount);
            base.map(|c| (c + common + rng.uniform(-amount, amount) * 0.5).clamp(0.0, 1.0))
        };
        let theta = rng.uniform(0.0, 2.0 * PI);
        Self {
            label,
            centre: (rng.uniform(0.36, 0.64), rng.uniform(0.36, 0.64)),
            radius: rng.uniform(0.22, 0.32),
            angle: rng.uniform(-PI / 12.0, PI / 12.0),
            fg: jitter(rng, [0.85, 0.75, 0.55], 0.08),
            bg: jitter(rng, [0.18, 0.22, 0.32], 0.06),
            shading: ((theta.cos(), theta.sin()), rng.uniform(0.0, 0.08)),
            seed: rng.next_u32() as u64 | ((rng.next_u32() as u64) << 32),
        }
    }

    /// Whether the point `(x, y)` (image units) lies inside the shape.
    fn inside(&self, x: f32, y: f32) -> bool {
        let (dx, dy) = (x - self.centre.0, y - self.centre.1);
        let (s, c) = self.angle.sin_cos();
        // Shape coordinates: rotated and scaled so that the shape's radius is 1.
        let u = (c * dx + s * dy) / self.radius;
        let v = (-s * dx + c * dy) / self.radius;
        let r = (u * u + v * v).sqrt();
        match self.label {
            0 => r <= 1.0,
            1 => (0.6..=1.0).contains(&r),
            2 => u.abs() <= 0.8 && v.abs() <= 0.8,
            3 => {
                let m = u.abs().max(v.abs());
                (0.5..=0.85).contains(&m)
            }
            4 => {
                // Upward triangle inscribed in the unit circle (apex at v = -1, base at 0.5).
                (-1.0..=0.5).contains(&v) && u.abs() <= (v + 1.0) / 1.5 * 0.866
            }
            5 => (u.abs() <= 0.3 && v.abs() <= 0.95) || (v.abs() <= 0.3 && u.abs() <= 0.95),
            6 => u.abs() + v.abs() <= 1.0,
            7 => {
                // Five-pointed star: radius oscillates between 0.45 and 1.0 with the angle.
                let a = v.atan2(u) + PI / 2.0;
                let sector = (a / (2.0 * PI / 5.0)).rem_euclid(1.0);
                let t = (sector - 0.5).abs() * 2.0; // 1 at the points, 0 between them
                r <= 0.45 + 0.55 * t
            }
            _ => false,
        }
    }

    /// Shape coverage of every pixel, in `[0, 1]` (4x4 supersampling).
    pub fn mask(&self) -> Vec<f32> {
        const SUB: usize = 4;
        let n = IMAGE_SIZE;
        let mut mask = vec![0.0; n * n];
        for py in 0..n {
            for px in 0..n {
                let mut hits = 0;
                for sy in 0..SUB {
                    for sx in 0..SUB {
                        let x = (px as f32 + (sx as f32 + 0.5) / SUB as f32) / n as f32;
                        let y = (py as f32 + (sy as f32 + 0.5) / SUB as f32) / n as f32;
                        hits += usize::from(self.inside(x, y));
                    }
                }
                mask[py * n + px] = hits as f32 / (SUB * SUB) as f32;
            }
        }
        mask
    }
}

/// A texture pattern (stripes, checks or dots) with a random scale and orientation.
struct Texture {
    kind: usize,
    period: f32,
    direction: (f32, f32),
}

impl Texture {
    fn random(rng: &mut Rng) -> Self {
        let theta = rng.uniform(0.0, PI);
        Self {
            kind: rng.below(3),
            period: rng.uniform(3.0, 7.0),
            direction: (theta.cos(), theta.sin()),
        }
    }

    /// The pattern at pixel `(x, y)`, in `[0, 1]`.
    fn value(&self, x: f32, y: f32) -> f32 {
        let (c, s) = self.direction;
        let (u, v) = (
            (c * x + s * y) / self.period,
            (-s * x + c * y) / self.period,
        );
        match self.kind {
            0 => (u * 2.0 * PI).sin() * 0.5 + 0.5,
            1 => f32::from(((u.floor() + v.floor()) as i64).rem_euclid(2) == 0),
            _ => {
                let (fu, fv) = (u - u.round(), v - v.round());
                f32::from(fu * fu + fv * fv < 0.09)
            }
        }
    }
}

/// Amplitude of the texture modulation in the texture domain.
const TEXTURE_AMPLITUDE: f32 = 0.35;

/// Renders `scene` in `domain` into `out` (`IMAGE_LEN` floats, channel-major, in `[0, 1]`).
pub fn render(scene: &Scene, domain: Domain, out: &mut [f32]) {
    let n = IMAGE_SIZE;
    let plane = n * n;
    let mask = scene.mask();
    // The appearance randomness depends on the scene and the domain, not on other images.
    let mut rng = Rng::new(scene.seed ^ (domain as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    // Texture domain: new random colours (the shape stays lighter than the background in
    // every channel, as in the source domain) each modulated by its own texture pattern.
    let textures = (domain == Domain::Texture).then(|| {
        let fg: [f32; 3] = [0; 3].map(|_| rng.uniform(0.55, 0.95));
        let bg: [f32; 3] = [0; 3].map(|_| rng.uniform(0.05, 0.45));
        (
            (fg, Texture::random(&mut rng)),
            (bg, Texture::random(&mut rng)),
        )
    });
    let ((sx, sy), amplitude) = scene.shading;
    for py in 0..n {
        for px in 0..n {
            let m = mask[py * n + px];
            let (x, y) = (px as f32 / n as f32 - 0.5, py as f32 / n as f32 - 0.5);
            let shade = amplitude * (sx * x + sy * y) * 2.0;
            let (fg, bg) = match &textures {
                Some(((fc, ft), (bc, bt))) => {
                    let (tx, ty) = (px as f32, py as f32);
                    let tf = TEXTURE_AMPLITUDE * (ft.value(tx, ty) - 0.5);
                    let tb = TEXTURE_AMPLITUDE * (bt.value(tx, ty) - 0.5);
                    (fc.map(|c| c + tf), bc.map(|c| c + tb))
                }
                None => (scene.fg, scene.bg.map(|c| c + shade)),
            };
            for c in 0..CHANNELS {
                out[c * plane + py * n + px] = bg[c] + (fg[c] - bg[c]) * m;
            }
        }
    }
    // Per-image appearance changes.
    match domain {
        Domain::ColourCast => {
            for c in 0..CHANNELS {
                let gain = rng.uniform(0.3, 1.0);
                let offset = rng.uniform(0.0, 0.35);
                for v in &mut out[c * plane..(c + 1) * plane] {
                    *v = *v * gain + offset;
                }
            }
        }
        Domain::Brightness => {
            let offset = rng.sign() * rng.uniform(0.25, 0.4);
            out.iter_mut().for_each(|v| *v += offset);
        }
        Domain::Contrast => {
            let mean = out.iter().sum::<f32>() / out.len() as f32;
            let gain = rng.uniform(0.2, 0.4);
            out.iter_mut().for_each(|v| *v = mean + (*v - mean) * gain);
        }
        Domain::Inverted => out.iter_mut().for_each(|v| *v = 1.0 - *v),
        Domain::Noise => out.iter_mut().for_each(|v| *v += 0.2 * rng.normal()),
        Domain::Source | Domain::Texture => {}
    }
    // Mild sensor noise everywhere, then clip to the valid range.
    for v in out.iter_mut() {
        *v = (*v + 0.02 * rng.normal()).clamp(0.0, 1.0);
    }
}

/// A set of images and labels.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// `len * IMAGE_LEN` floats, image after image.
    pub images: Vec<f32>,
    /// One label per image.
    pub labels: Vec<i64>,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// The image and label at `index`.
    pub fn get(&self, index: usize) -> (&[f32], i64) {
        (
            &self.images[index * IMAGE_LEN..(index + 1) * IMAGE_LEN],
            self.labels[index],
        )
    }
}

/// `count` random scenes with balanced classes (class `i % CLASSES.len()`), in random order.
pub fn scenes(count: usize, seed: u64) -> Vec<Scene> {
    let mut rng = Rng::new(seed);
    let mut labels: Vec<usize> = (0..count).map(|i| i % CLASSES.len()).collect();
    rng.shuffle(&mut labels);
    labels
        .into_iter()
        .map(|l| Scene::random(l, &mut rng))
        .collect()
}

/// Renders `scenes` in `domain`.
pub fn render_all(scenes: &[Scene], domain: Domain) -> Dataset {
    let mut images = vec![0.0; scenes.len() * IMAGE_LEN];
    for (scene, out) in scenes.iter().zip(images.chunks_exact_mut(IMAGE_LEN)) {
        render(scene, domain, out);
    }
    Dataset {
        images,
        labels: scenes.iter().map(|s| s.label as i64).collect(),
    }
}
