//! Thumbnails: the spec's standard size classes, crop and scale, generated on first request with decode limits against decompression bombs, and cached on disk.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, Limits, imageops::FilterType};
use serde::{Deserialize, Serialize};

use super::{Media, MediaRecord};
use crate::{
    error::{Error, Result},
    storage::{MediaRead, MediaWrite},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Crop,
    Scale,
}

impl Method {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "crop" => Ok(Method::Crop),
            "scale" => Ok(Method::Scale),
            _ => Err(Error::invalid_param("method must be crop or scale")),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Method::Crop => "crop",
            Method::Scale => "scale",
        }
    }
}

/// The sizes the spec suggests servers pre-generate; a request is served by
/// the smallest that covers it.
const SIZES: [(u32, u32, Method); 5] = [
    (32, 32, Method::Crop),
    (96, 96, Method::Crop),
    (320, 240, Method::Scale),
    (640, 480, Method::Scale),
    (800, 600, Method::Scale),
];

/// The size class that serves a request for `w`x`h`: the smallest standard
/// box that covers it, made with the method asked for (a crop stays a crop,
/// so the client gets the shape it wants).
pub fn size_class(w: u32, h: u32, method: Method) -> (u32, u32, Method) {
    let (sw, sh, _) = SIZES
        .iter()
        .copied()
        .find(|(sw, sh, _)| *sw >= w && *sh >= h)
        .unwrap_or(SIZES[SIZES.len() - 1]);
    (sw, sh, method)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThumbnailRecord {
    pub content_type: String,
    pub size: u64,
}

const THUMBNAILABLE: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// Decodes within the configured pixel budget and resizes. Pure CPU work;
/// run it off the async threads.
fn render(
    bytes: &[u8],
    max_pixels: u64,
    w: u32,
    h: u32,
    method: Method,
) -> Result<(Vec<u8>, &'static str)> {
    let bad = |m: String| Error::Unknown(format!("cannot thumbnail this media: {m}"));
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    let format = reader
        .format()
        .ok_or_else(|| bad("unknown image format".into()))?;
    // Read the header first: a small file can declare billions of pixels.
    let (ow, oh) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| bad(e.to_string()))?;
    if u64::from(ow) * u64::from(oh) > max_pixels {
        return Err(bad(format!(
            "{ow}x{oh} is more than the {max_pixels} pixels this server decodes"
        )));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(ow);
    limits.max_image_height = Some(oh);
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    reader.limits(limits);
    let img = reader.decode().map_err(|e| bad(e.to_string()))?;
    let out = match method {
        // Never upscale: a small original is its own thumbnail.
        Method::Scale if ow <= w && oh <= h => img,
        Method::Scale => img.resize(w, h, FilterType::Triangle),
        Method::Crop if ow <= w || oh <= h => {
            img.resize_to_fill(w.min(ow), h.min(oh), FilterType::Triangle)
        }
        Method::Crop => img.resize_to_fill(w, h, FilterType::Triangle),
    };
    let (fmt, mime) = if format == ImageFormat::Jpeg {
        (ImageFormat::Jpeg, "image/jpeg")
    } else {
        (ImageFormat::Png, "image/png")
    };
    let out = if fmt == ImageFormat::Jpeg {
        image::DynamicImage::ImageRgb8(out.to_rgb8())
    } else {
        out
    };
    let mut buf = Vec::new();
    out.write_to(&mut Cursor::new(&mut buf), fmt)
        .map_err(Error::internal)?;
    Ok((buf, mime))
}

impl Media {
    /// The thumbnail for a request, made on first use and then served from disk.
    pub async fn thumbnail(
        &self,
        server: &str,
        id: &str,
        rec: &MediaRecord,
        w: u32,
        h: u32,
        method: Method,
    ) -> Result<(Vec<u8>, String)> {
        let ct = rec.content_type.as_deref().unwrap_or_default();
        if !THUMBNAILABLE.contains(&ct) {
            return Err(Error::Unknown(format!("cannot thumbnail {ct}")));
        }
        let (cw, ch, cm) = size_class(w, h, method);
        let path = self
            .file_path(server, id)
            .with_extension(format!("{cw}x{ch}-{}", cm.name()));
        if let Some(t) = self.store.thumbnail(server, id, cw, ch, cm.name())?
            && let Ok(bytes) = tokio::fs::read(&path).await
        {
            return Ok((bytes, t.content_type));
        }
        let original = tokio::fs::read(self.file_path(server, id))
            .await
            .map_err(|e| Error::Internal(format!("media file: {e}")))?;
        let max_pixels = self.config.max_image_pixels;
        let _permit = self.decoders.acquire().await.map_err(Error::internal)?;
        let (bytes, mime) =
            tokio::task::spawn_blocking(move || render(&original, max_pixels, cw, ch, cm))
                .await
                .map_err(Error::internal)??;
        let tmp = self
            .config
            .path
            .join("tmp")
            .join(crate::accounts::random_string(16));
        let io = |e: std::io::Error| Error::Internal(format!("thumbnail storage: {e}"));
        tokio::fs::write(&tmp, &bytes).await.map_err(io)?;
        tokio::fs::rename(&tmp, &path).await.map_err(io)?;
        let mut txn = self.store.transaction();
        let record = ThumbnailRecord {
            content_type: mime.to_owned(),
            size: bytes.len() as u64,
        };
        txn.put_thumbnail(server, id, cw, ch, cm.name(), &record);
        txn.commit()?;
        Ok((bytes, mime.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_the_smallest_covering_class() {
        assert_eq!(size_class(20, 20, Method::Crop), (32, 32, Method::Crop));
        assert_eq!(size_class(40, 40, Method::Crop), (96, 96, Method::Crop));
        assert_eq!(
            size_class(300, 200, Method::Scale),
            (320, 240, Method::Scale)
        );
        assert_eq!(
            size_class(100, 100, Method::Scale),
            (320, 240, Method::Scale)
        );
        assert_eq!(size_class(320, 240, Method::Crop), (320, 240, Method::Crop));
        assert_eq!(
            size_class(5000, 5000, Method::Scale),
            (800, 600, Method::Scale)
        );
    }

    #[test]
    fn a_declared_giant_is_refused_before_decoding() {
        // A PNG header declaring 100000 x 100000 pixels, with no image data.
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        chunk(&mut png, &ihdr);
        // A tiny zlib stream (one stored block of 16 zero bytes) as the data.
        let data = [0u8; 16];
        let mut idat = b"IDAT\x78\x01\x01".to_vec();
        idat.extend_from_slice(&(data.len() as u16).to_le_bytes());
        idat.extend_from_slice(&(!(data.len() as u16)).to_le_bytes());
        idat.extend_from_slice(&data);
        idat.extend_from_slice(&adler32(&data).to_be_bytes());
        chunk(&mut png, &idat);
        chunk(&mut png, b"IEND");
        let err = render(&png, 32 << 20, 96, 96, Method::Crop).unwrap_err();
        assert!(err.to_string().contains("pixels"), "{err}");
    }

    /// Appends a PNG chunk: `typed` is the 4-byte type followed by the data.
    fn chunk(png: &mut Vec<u8>, typed: &[u8]) {
        png.extend_from_slice(&((typed.len() - 4) as u32).to_be_bytes());
        png.extend_from_slice(typed);
        png.extend_from_slice(&crc32(typed).to_be_bytes());
    }

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for d in data {
            a = (a + u32::from(*d)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for b in data {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
