//! The inventory case's `stock` entity as a Restate virtual object, with the
//! same two handlers and the same rules as Tessera's
//! (`examples/inventory/src/stock.rs`): `restock` adds units, `purchase`
//! sells them and is refused (409, `insufficient_stock`) when fewer are
//! available or (`unknown_sku`) when the store never stocked the item.
//! The state is one value per object (units on hand and sold), read and
//! written once per call, as Tessera's entity appends one event.

use restate_sdk::prelude::*;
use serde::{Deserialize, Serialize};

/// A command's body: `{"qty": n}`, as Tessera's.
#[derive(Deserialize)]
struct Qty {
    qty: u32,
}

/// The stock's state and reply, as Tessera's (`on_hand`, plus `sold`).
#[derive(Serialize, Deserialize, Default, Clone, Copy)]
struct Level {
    on_hand: i64,
    sold: u64,
}

const STATE: &str = "stock";

struct Stock;

#[object(name = "stock")]
#[allow(clippy::needless_lifetimes)]
impl Stock {
    #[handler]
    async fn restock(&self, ctx: ObjectContext<'_>, body: Json<Qty>) -> Result<Json<Level>, HandlerError> {
        let qty = body.into_inner().qty;
        if qty == 0 {
            return Err(TerminalError::new_with_code(400, "qty must be > 0").into());
        }
        let mut s = ctx.get::<Json<Level>>(STATE).await?.map(Json::into_inner).unwrap_or_default();
        s.on_hand += i64::from(qty);
        ctx.set(STATE, Json(s));
        Ok(Json(s))
    }

    #[handler]
    async fn purchase(&self, ctx: ObjectContext<'_>, body: Json<Qty>) -> Result<Json<Level>, HandlerError> {
        let qty = body.into_inner().qty;
        if qty == 0 {
            return Err(TerminalError::new_with_code(400, "qty must be > 0").into());
        }
        let Some(Json(mut s)) = ctx.get::<Json<Level>>(STATE).await? else {
            return Err(TerminalError::new_with_code(409, "unknown_sku: this store has never stocked it").into());
        };
        if i64::from(qty) > s.on_hand {
            return Err(TerminalError::new_with_code(409, "insufficient_stock").into());
        }
        s.on_hand -= i64::from(qty);
        s.sold += u64::from(qty);
        ctx.set(STATE, Json(s));
        Ok(Json(s))
    }
}

#[tokio::main]
async fn main() {
    let addr = std::env::var("STOCK_LISTEN").unwrap_or_else(|_| "127.0.0.1:9080".into());
    HttpServer::new(Endpoint::builder().bind(Stock).build()).listen_and_serve(addr.parse().unwrap()).await;
}
