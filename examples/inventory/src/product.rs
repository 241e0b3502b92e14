//! Products: the `product` entity (id = the SKU) is the regional catalog's
//! source of truth, in the same journal as the stock. A warehouse's
//! `upsert` is validated in the handler and persisted; a new picture (a
//! blob reference) triggers the stateless `product.image` function, whose
//! result comes back to the entity as `image_processed` and is persisted
//! too (or the rejection, e.g. an undecodable picture: the product stays,
//! without picture details). `remove` takes the product out of the catalog.
//! `product.upsert` is the same validation as a stand-alone function.

use serde::{Deserialize, Serialize};
use tessera_entities::{Ctx, Effect, Entity, FnCtx, Function, FunctionError, Rejection, Response};

use crate::image::{ImageInfo, ImageInput};

/// The function.
pub struct ProductUpsert;

/// A product document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    /// Stock-keeping unit, e.g. `sku-42`.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Price (≥ 0).
    pub price: f64,
    /// Optional description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The accepted, normalised product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upserted {
    /// The normalised document.
    pub product: Product,
    /// When it was accepted (ms since the epoch).
    pub accepted_at_ms: i64,
}

/// Validates a product: non-empty sku and name, a finite price ≥ 0.
pub fn validate(p: &Product) -> Result<Product, FunctionError> {
    let sku = p.sku.trim();
    if sku.is_empty() || sku.contains(char::is_whitespace) {
        return Err(FunctionError::rejected("invalid_sku", "sku must be non-empty without spaces"));
    }
    let name = p.name.trim();
    if name.is_empty() {
        return Err(FunctionError::rejected("invalid_name", "name must not be empty"));
    }
    if !p.price.is_finite() || p.price < 0.0 {
        return Err(FunctionError::rejected("invalid_price", format!("price must be ≥ 0, got {}", p.price)));
    }
    Ok(Product {
        sku: sku.to_owned(),
        name: name.to_owned(),
        price: (p.price * 100.0).round() / 100.0,
        description: p.description.clone(),
    })
}

impl Function for ProductUpsert {
    const NAME: &'static str = "product.upsert";
    type Input = Product;
    type Output = Upserted;

    async fn call(&self, input: Product, ctx: &FnCtx) -> Result<Upserted, FunctionError> {
        Ok(Upserted { product: validate(&input)?, accepted_at_ms: ctx.now_ms })
    }
}

/// The product entity (`product`, id = the SKU).
pub struct ProductEntity;

/// A product in the catalog.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductState {
    /// The current document (`None` before the first upsert).
    pub product: Option<Product>,
    /// The picture's blob reference, as the warehouse gave it.
    pub image: Option<String>,
    /// What processing found in the picture.
    pub image_info: Option<ImageInfo>,
    /// Why the picture was refused.
    pub image_error: Option<String>,
    /// Taken out of the catalog.
    pub removed: bool,
    /// Upserts so far.
    pub revision: u64,
}

/// Commands of a product.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ProductCommand {
    /// Adds or updates the product (the SKU is the entity's id).
    Upsert {
        /// Display name.
        name: String,
        /// Price (≥ 0).
        price: f64,
        /// Optional description.
        #[serde(default)]
        description: Option<String>,
        /// The picture, a blob reference (`blob:{sha256}`).
        #[serde(default)]
        image: Option<String>,
    },
    /// The result of `product.image`.
    ImageProcessed(Response<ImageInfo>),
    /// Takes the product out of the catalog.
    Remove,
    /// Reads the product.
    Get,
}

/// Events of a product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProductEvent {
    /// Added or updated.
    Upserted {
        /// The normalised document.
        product: Product,
        /// Its picture.
        image: Option<String>,
    },
    /// The picture was processed.
    ImageProcessed(ImageInfo),
    /// The picture was refused.
    ImageRejected {
        /// The picture.
        image: String,
        /// Why.
        reason: String,
    },
    /// Taken out of the catalog.
    Removed,
}

impl ProductEntity {
    fn after(s: &ProductState, e: ProductEvent) -> Effect<ProductEvent, ProductState> {
        let mut next = s.clone();
        ProductEntity.apply(&mut next, &e);
        Effect::persist(e, next)
    }
}

impl Entity for ProductEntity {
    const TYPE: &'static str = "product";
    type State = ProductState;
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Reply = ProductState;

    fn handle(
        &self,
        s: &ProductState,
        c: ProductCommand,
        ctx: &mut Ctx,
    ) -> Result<Effect<ProductEvent, ProductState>, Rejection> {
        let sku = ctx.entity_id().to_owned();
        let reject = |e: FunctionError| match e {
            FunctionError::Rejected(r) => r,
            other => Rejection::new("invalid_product", other.to_string()),
        };
        match c {
            ProductCommand::Upsert { name, price, description, image } => {
                let product = validate(&Product { sku: sku.clone(), name, price, description }).map_err(reject)?;
                if product.sku != sku {
                    return Err(Rejection::new("invalid_sku", "a product id is its sku, without spaces"));
                }
                let unchanged = s.product.as_ref() == Some(&product) && s.image == image && !s.removed;
                if unchanged {
                    return Ok(Effect::reply(s.clone()));
                }
                let new_picture = image.is_some() && image != s.image;
                let effect = Self::after(s, ProductEvent::Upserted { product, image: image.clone() });
                Ok(match image {
                    Some(image) if new_picture => {
                        effect.and_call(crate::ProductImage::NAME, &ImageInput { sku, image }, "image_processed")
                    }
                    _ => effect,
                })
            }
            ProductCommand::ImageProcessed(r) => {
                let (image, event) = match r.result {
                    Ok(info) => (info.image.clone(), ProductEvent::ImageProcessed(info)),
                    Err(why) => {
                        // The rejection names no picture: it is the current one
                        // if it was the last asked for.
                        let image = s.image.clone().unwrap_or_default();
                        (
                            image.clone(),
                            ProductEvent::ImageRejected { image, reason: format!("{}: {}", why.code, why.message) },
                        )
                    }
                };
                // A result for a picture since replaced changes nothing.
                if s.image.as_deref() != Some(&image) {
                    return Ok(Effect::reply(s.clone()));
                }
                Ok(Self::after(s, event))
            }
            ProductCommand::Remove if s.product.is_none() => {
                Err(Rejection::new("unknown_sku", format!("{sku} is not in the catalog")))
            }
            ProductCommand::Remove if s.removed => Ok(Effect::reply(s.clone())),
            ProductCommand::Remove => Ok(Self::after(s, ProductEvent::Removed)),
            ProductCommand::Get if s.product.is_none() => {
                Err(Rejection::new("unknown_sku", format!("{sku} is not in the catalog")))
            }
            ProductCommand::Get => Ok(Effect::reply(s.clone())),
        }
    }

    fn apply(&self, s: &mut ProductState, e: &ProductEvent) {
        match e {
            ProductEvent::Upserted { product, image } => {
                if *image != s.image {
                    s.image_info = None;
                    s.image_error = None;
                }
                s.product = Some(product.clone());
                s.image.clone_from(image);
                s.removed = false;
                s.revision += 1;
            }
            ProductEvent::ImageProcessed(info) => {
                s.image_info = Some(info.clone());
                s.image_error = None;
            }
            ProductEvent::ImageRejected { reason, .. } => {
                s.image_info = None;
                s.image_error = Some(reason.clone());
            }
            ProductEvent::Removed => s.removed = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_entities::TestKit;

    fn upsert(name: &str, image: Option<&str>) -> ProductCommand {
        ProductCommand::Upsert { name: name.into(), price: 10.0, description: None, image: image.map(Into::into) }
    }

    fn info(image: &str) -> ImageInfo {
        ImageInfo {
            image: image.into(),
            width: 2,
            height: 1,
            format: "png".into(),
            sha256: "h".into(),
            thumbnail: "blob:t".into(),
        }
    }

    #[test]
    fn an_upsert_with_a_new_picture_calls_the_image_function() {
        let mut k = TestKit::new(ProductEntity).with_id("sku-1");
        let out = k.accept(upsert("Shoe", Some("blob:a")));
        let calls = out.calls();
        assert_eq!((calls[0].function.as_str(), calls[0].reply_to.as_str()), ("product.image", "image_processed"));
        assert_eq!(k.state().revision, 1);
        // The same document again: nothing new, no work.
        let again = k.accept(upsert("Shoe", Some("blob:a")));
        assert!(again.events.is_empty() && again.actions.is_empty());
        // A new name, the same picture: stored, no new picture work.
        assert!(k.accept(upsert("Runner", Some("blob:a"))).calls().is_empty());
        let done = k.accept(ProductCommand::ImageProcessed(Response {
            correlation: "product.image".into(),
            result: Ok(info("blob:a")),
        }));
        assert_eq!(done.reply.image_info.map(|i| i.width), Some(2));
        assert_eq!(k.replayed_state(), *k.state());
    }

    #[test]
    fn a_stale_or_refused_picture_keeps_the_product() {
        let mut k = TestKit::new(ProductEntity).with_id("sku-1");
        k.accept(upsert("Shoe", Some("blob:a")));
        k.accept(upsert("Shoe", Some("blob:b")));
        let stale = k.accept(ProductCommand::ImageProcessed(Response {
            correlation: "product.image".into(),
            result: Ok(info("blob:a")),
        }));
        assert!(stale.events.is_empty(), "a result for a replaced picture is dropped");
        let refused = Rejection::new("undecodable_image", "not a picture");
        let out = k.accept(ProductCommand::ImageProcessed(Response {
            correlation: "product.image".into(),
            result: Err(refused),
        }));
        assert_eq!(out.reply.image_error.as_deref(), Some("undecodable_image: not a picture"));
        assert_eq!(out.reply.product.map(|p| p.name), Some("Shoe".to_owned()));
    }

    #[test]
    fn bad_documents_and_unknown_skus_are_refused() {
        let mut k = TestKit::new(ProductEntity).with_id("sku-1");
        assert_eq!(k.reject(ProductCommand::Get).code, "unknown_sku");
        assert_eq!(k.reject(ProductCommand::Remove).code, "unknown_sku");
        assert_eq!(k.reject(upsert(" ", None)).code, "invalid_name");
        let bad_price = ProductCommand::Upsert { name: "x".into(), price: -1.0, description: None, image: None };
        assert_eq!(k.reject(bad_price).code, "invalid_price");
        assert_eq!(k.seq(), 0, "nothing half-written");
        k.accept(upsert("Shoe", None));
        assert!(k.accept(ProductCommand::Remove).reply.removed);
        assert!(!k.accept(upsert("Shoe", None)).reply.removed, "an upsert lists it again");
        let mut spaced = TestKit::new(ProductEntity).with_id("sku 1");
        assert_eq!(spaced.reject(upsert("Shoe", None)).code, "invalid_sku");
    }

    fn p(sku: &str, name: &str, price: f64) -> Product {
        Product { sku: sku.into(), name: name.into(), price, description: None }
    }

    #[test]
    fn accepts_and_normalises() {
        let out = validate(&p(" sku-1 ", " Tea ", 2.499)).unwrap();
        assert_eq!(out, p("sku-1", "Tea", 2.5));
    }

    #[test]
    fn rejects_bad_documents() {
        for (bad, code) in [
            (p("", "Tea", 1.0), "invalid_sku"),
            (p("s", " ", 1.0), "invalid_name"),
            (p("s", "Tea", -1.0), "invalid_price"),
            (p("s", "Tea", f64::NAN), "invalid_price"),
        ] {
            match validate(&bad) {
                Err(FunctionError::Rejected(r)) => assert_eq!(r.code, code),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }
}
