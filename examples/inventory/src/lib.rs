//! The retail inventory case study: per-store stock that never oversells
//! ([`Stock`]) and a stateless product upsert ([`ProductUpsert`]).
//!
//! ```
//! let registry = inventory::registry().unwrap();
//! assert!(registry.entity("stock").is_some());
//! assert!(registry.function("product.upsert").is_some());
//! ```

pub mod demo;
mod product;
mod stock;

pub use product::{Product, ProductUpsert, Upserted};
pub use stock::{Stock, StockCommand, StockEvent, StockReply, StockState};
use tessera_entities::{Registry, RegistryError};

/// The inventory application's entities and functions.
pub fn registry() -> Result<Registry, RegistryError> {
    Registry::builder().entity(Stock).function(ProductUpsert).build()
}
