//! The retail inventory case study, on entities, messages, timers and
//! functions:
//!
//! - [`Stock`] (`stock`, `{store}:{sku}`): per-store stock that never
//!   oversells, with per-order reservations that expire by themselves;
//! - [`Order`] (`order`): a saga across stores — reserve every line, commit,
//!   or compensate on a refusal or its deadline;
//! - [`Customer`] (`customer`): purchase history, recorded by confirmed orders;
//! - [`ProductEntity`] (`product`, id = SKU): the regional catalog; a new
//!   picture triggers the stateless [`ProductImage`] function (`product.image`);
//! - [`Availability`] (`availability`, id = SKU): the central region's view
//!   across regions, each regional event counted once;
//! - [`ProductUpsert`] (`product.upsert`): stand-alone product validation.
//!
//! ```
//! let registry = inventory::registry().unwrap();
//! for entity in ["stock", "order", "customer", "product", "availability"] {
//!     assert!(registry.entity(entity).is_some());
//! }
//! assert!(registry.function("product.image").is_some());
//! ```

mod availability;
pub mod blobs;
pub mod central;
mod customer;
pub mod demo;
mod image;
mod order;
mod product;
pub mod simulate;
mod stock;

pub use availability::{
    Availability, AvailabilityCommand, AvailabilityEvent, AvailabilityReply, AvailabilityState, BridgeOffset,
    CatalogEntry, CatalogProduct, Observation, OffsetCommand, OffsetEvent, OffsetState, observation,
};
pub use blobs::Blobs;
pub use customer::{Customer, CustomerCommand, CustomerEvent, CustomerState, PurchaseRecord};
pub use image::{ImageInfo, ImageInput, ProductImage, process as process_image, sample_png};
pub use order::{MAX_LINES, Order, OrderCommand, OrderEvent, OrderLine, OrderState, OrderStatus, OrderView};
pub use product::{Product, ProductCommand, ProductEntity, ProductEvent, ProductState, ProductUpsert, Upserted};
pub use stock::{Stock, StockCommand, StockEvent, StockReply, StockState};
use tessera_entities::{Registry, RegistryError};

/// The inventory application's entities and functions, with pictures in
/// [`Blobs::from_env`].
pub fn registry() -> Result<Registry, RegistryError> {
    registry_with(Blobs::from_env())
}

/// The inventory application's entities and functions, with pictures in `blobs`.
pub fn registry_with(blobs: Blobs) -> Result<Registry, RegistryError> {
    Registry::builder()
        .entity(Stock)
        .entity(Order)
        .entity(Customer)
        .entity(ProductEntity)
        .entity(Availability)
        .entity(BridgeOffset)
        .function(ProductUpsert)
        .function(ProductImage::new(blobs))
        .build()
}
