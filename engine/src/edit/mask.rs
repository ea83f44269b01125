//! [`Mask`]: which pixels of an image an edit regenerates.

use crate::error::{Error, Result};
use crate::pixels::RgbaImage;

/// A per-pixel choice: `true` = regenerate this pixel, `false` = keep it as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mask {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` flags, rows top to bottom.
    pub regenerate: Vec<bool>,
}

impl Mask {
    /// A mask that keeps every pixel.
    pub fn keep_all(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            regenerate: vec![false; width as usize * height as usize],
        }
    }

    /// A mask from an image: a pixel is regenerated when it is neither black (R, G and B all 0)
    /// nor fully transparent; black or transparent pixels are kept. A white-on-black mask
    /// painted in any editor does what it shows.
    pub fn from_rgba(img: &RgbaImage) -> Result<Self> {
        let n = img.width as usize * img.height as usize;
        if img.pixels.len() != n * 4 {
            return Err(Error::InvalidInput(format!(
                "a {}x{} mask image needs {} bytes, it has {}",
                img.width,
                img.height,
                n * 4,
                img.pixels.len()
            )));
        }
        Ok(Self {
            width: img.width,
            height: img.height,
            regenerate: img
                .pixels
                .chunks_exact(4)
                .map(|p| p[3] != 0 && (p[0] | p[1] | p[2]) != 0)
                .collect(),
        })
    }

    /// Mark the rectangle of `w` x `h` pixels at (x, y) (clipped to the mask) for regeneration.
    pub fn add_rect(&mut self, x: u32, y: u32, w: u32, h: u32) {
        let (x1, y1) = (
            x.saturating_add(w).min(self.width),
            y.saturating_add(h).min(self.height),
        );
        for yy in y.min(self.height)..y1 {
            for xx in x.min(self.width)..x1 {
                self.regenerate[yy as usize * self.width as usize + xx as usize] = true;
            }
        }
    }

    /// Whether the pixel at (x, y) is regenerated (false outside the mask).
    pub fn get(&self, x: u32, y: u32) -> bool {
        x < self.width
            && y < self.height
            && self.regenerate[y as usize * self.width as usize + x as usize]
    }

    /// Number of pixels to regenerate.
    pub fn count(&self) -> usize {
        self.regenerate.iter().filter(|&&r| r).count()
    }

    /// The mask as an RGBA8 image: white = regenerate, black = keep (what [`Mask::from_rgba`]
    /// reads back).
    pub fn to_rgba(&self) -> RgbaImage {
        RgbaImage {
            width: self.width,
            height: self.height,
            pixels: self
                .regenerate
                .iter()
                .flat_map(|&r| if r { [255u8; 4] } else { [0, 0, 0, 255] })
                .collect(),
        }
    }

    /// An error unless the mask is `width` x `height`; `what` names the mask in the message.
    pub(crate) fn check_size(&self, width: u32, height: u32, what: &str) -> Result<()> {
        if (self.width, self.height) != (width, height)
            || self.regenerate.len() != width as usize * height as usize
        {
            return Err(Error::InvalidInput(format!(
                "{what} is {}x{} pixels, the image is {width}x{height}",
                self.width, self.height
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn white_or_coloured_regenerates_black_and_transparent_keep() {
        let img = RgbaImage {
            width: 4,
            height: 1,
            pixels: vec![
                255, 255, 255, 255, 0, 0, 0, 255, 9, 0, 0, 255, 255, 255, 255, 0,
            ],
        };
        let m = Mask::from_rgba(&img).unwrap();
        assert_eq!(m.regenerate, vec![true, false, true, false]);
        assert_eq!(Mask::from_rgba(&m.to_rgba()).unwrap(), m);
        let short = RgbaImage {
            width: 2,
            height: 2,
            pixels: vec![0; 3],
        };
        assert!(Mask::from_rgba(&short).is_err());
    }

    #[test]
    fn rects_clip_and_sizes_are_checked() {
        let mut m = Mask::keep_all(4, 4);
        m.add_rect(2, 3, 10, 10);
        assert_eq!(m.count(), 2);
        assert!(m.get(3, 3) && !m.get(1, 3) && !m.get(9, 9));
        let msg = m.check_size(8, 4, "the mask").unwrap_err().to_string();
        assert!(
            msg.contains("the mask is 4x4 pixels, the image is 8x4"),
            "{msg}"
        );
    }
}
