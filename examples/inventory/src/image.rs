//! `product.image`: the stateless picture work a product upsert triggers —
//! decode the picture (a blob reference), record its dimensions and hash,
//! make a thumbnail (PNG, at most 128×128) and store it as a blob. Decoding
//! runs off the async threads, with limits: a hostile file is an
//! `undecodable_image` rejection, never a huge allocation.

use image::{ImageFormat, ImageReader, Limits};
use serde::{Deserialize, Serialize};
use tessera_entities::{FnCtx, Function, FunctionError};

use crate::blobs::{BlobError, Blobs, sha256_hex};

/// The thumbnail's largest side, pixels.
pub const THUMBNAIL: u32 = 128;

/// The function.
pub struct ProductImage {
    blobs: Blobs,
}

impl ProductImage {
    /// Reads and writes pictures in `blobs`.
    pub fn new(blobs: Blobs) -> Self {
        Self { blobs }
    }
}

/// What to process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInput {
    /// The product.
    pub sku: String,
    /// The picture, `blob:{sha256}`.
    pub image: String,
}

/// What the picture is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The picture processed (as given).
    pub image: String,
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// The format, e.g. `png`.
    pub format: String,
    /// SHA-256 of the picture's bytes.
    pub sha256: String,
    /// The thumbnail, `blob:{sha256}`.
    pub thumbnail: String,
}

/// Decodes `bytes` and makes the thumbnail; `Err` is the rejection's message.
pub fn process(bytes: &[u8]) -> Result<(ImageInfo, Vec<u8>), String> {
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    let format = reader.format().ok_or("not a picture format this function reads (png, jpeg)")?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(16_384);
    limits.max_image_height = Some(16_384);
    limits.max_alloc = Some(256 << 20);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| e.to_string())?;
    let thumb = img.thumbnail(THUMBNAIL, THUMBNAIL);
    let mut png = Vec::new();
    thumb.write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png).map_err(|e| e.to_string())?;
    let info = ImageInfo {
        image: String::new(),
        width: img.width(),
        height: img.height(),
        format: format.extensions_str().first().copied().unwrap_or("unknown").to_owned(),
        sha256: sha256_hex(bytes),
        thumbnail: String::new(),
    };
    Ok((info, png))
}

fn blob_error(e: BlobError) -> FunctionError {
    match e {
        BlobError::InvalidRef(_) => FunctionError::rejected("invalid_image_ref", e.to_string()),
        BlobError::Missing(_) => FunctionError::rejected("missing_image", e.to_string()),
        BlobError::TooBig(..) => FunctionError::rejected("image_too_big", e.to_string()),
        _ => FunctionError::Unavailable(e.to_string()),
    }
}

impl Function for ProductImage {
    const NAME: &'static str = "product.image";
    type Input = ImageInput;
    type Output = ImageInfo;

    async fn call(&self, input: ImageInput, _: &FnCtx) -> Result<ImageInfo, FunctionError> {
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || {
            let bytes = blobs.get(&input.image).map_err(blob_error)?;
            let (mut info, thumb) = process(&bytes).map_err(|why| {
                FunctionError::rejected("undecodable_image", format!("{} of {}: {why}", input.image, input.sku))
            })?;
            info.thumbnail = blobs.put(&thumb).map_err(blob_error)?;
            info.image = input.image;
            Ok(info)
        })
        .await
        .map_err(|e| FunctionError::Failed(format!("image task: {e}")))?
    }
}

/// A small PNG (a gradient), for demos and tests.
pub fn sample_png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png)
        .expect("encoding a PNG in memory");
    png
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> FnCtx {
        FnCtx { invocation_id: "t".into(), now_ms: 0, device: tessera_entities::Device::Cpu }
    }

    #[tokio::test]
    async fn records_dimensions_and_stores_a_thumbnail() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::new(dir.path());
        let png = sample_png(640, 320);
        let image = blobs.put(&png).unwrap();
        let f = ProductImage::new(blobs.clone());
        let info = f.call(ImageInput { sku: "s".into(), image: image.clone() }, &ctx()).await.unwrap();
        assert_eq!((info.width, info.height, info.format.as_str()), (640, 320, "png"));
        assert_eq!(info.sha256, sha256_hex(&png));
        assert_eq!(info.image, image);
        let thumb = image::load_from_memory(&blobs.get(&info.thumbnail).unwrap()).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (128, 64));
    }

    #[tokio::test]
    async fn bad_pictures_are_rejections() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::new(dir.path());
        let f = ProductImage::new(blobs.clone());
        let mut truncated = sample_png(64, 64);
        truncated.truncate(truncated.len() / 2);
        let cases = [
            (blobs.put(b"not a picture at all").unwrap(), "undecodable_image"),
            (blobs.put(&truncated).unwrap(), "undecodable_image"),
            (format!("blob:{}", "a".repeat(64)), "missing_image"),
            ("http://elsewhere/x.png".to_owned(), "invalid_image_ref"),
        ];
        for (image, code) in cases {
            match f.call(ImageInput { sku: "s".into(), image: image.clone() }, &ctx()).await {
                Err(FunctionError::Rejected(r)) => assert_eq!(r.code, code, "{image}"),
                other => panic!("{image}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_header_claiming_a_giant_picture_is_refused_without_allocating_it() {
        // A PNG header for 100 000 × 100 000 pixels, with no data.
        let mut png = sample_png(1, 1);
        png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(process(&png).is_err());
    }
}
