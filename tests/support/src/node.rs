//! In-process nodes over any registry.

use std::path::Path;

use tessera_entities::Registry;
use tessera_runtime::{NodeBuilder, NodeConfig, Server};

/// A node serving `registry` on `dir` (embedded journal) with HTTP on a free
/// port; `tweak` adjusts the config. Returns it and its base URL.
pub async fn node(registry: Registry, dir: &Path, tweak: impl FnOnce(&mut NodeConfig)) -> (Server, String) {
    node_with(registry, dir, tweak, |b| b).await
}

/// Like [`node`], with `build` adding to the builder (projections, layers).
pub async fn node_with(
    registry: Registry,
    dir: &Path,
    tweak: impl FnOnce(&mut NodeConfig),
    build: impl FnOnce(NodeBuilder) -> NodeBuilder,
) -> (Server, String) {
    let mut config = NodeConfig::default().with(|c| {
        c.journal.data_dir = dir.to_path_buf();
        c.http.listen = Some("127.0.0.1:0".into());
    });
    tweak(&mut config);
    let node = build(NodeBuilder::new(registry).config(config)).build().await.expect("node starts");
    let base = format!("http://{}", node.http_addr().expect("http"));
    (node, base)
}

/// A keyspace on the test server migrated as `tessera journal migrate`
/// does (the journal and the result store's table); returns its URL.
pub async fn migrated_keyspace(bucket_size: i64) -> String {
    crate::servers::migrated_keyspace(bucket_size, vec![tessera_runtime::results::ScyllaResultStore::table()]).await
}
