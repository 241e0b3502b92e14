//! `product.upsert`: a stateless function that validates and normalises a
//! product document sent by a warehouse.

use serde::{Deserialize, Serialize};
use tessera_entities::{FnCtx, Function, FunctionError};

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

#[cfg(test)]
mod tests {
    use super::*;

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
