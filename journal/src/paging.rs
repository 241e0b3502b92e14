//! A stream built from page reads, so backends only write "read one page".

use std::future::Future;

use futures::stream::{self, Stream, StreamExt};

use crate::error::JournalError;

/// Reads pages with `fetch(cursor)` until it returns no next cursor, yielding
/// each item. A page is read only when the previous one was consumed.
pub fn paged<T, C, F, Fut>(start: C, fetch: F) -> impl Stream<Item = Result<T, JournalError>> + Send + 'static
where
    T: Send + 'static,
    C: Send + 'static,
    F: FnMut(C) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(Vec<T>, Option<C>), JournalError>> + Send + 'static,
{
    stream::unfold((Some(start), fetch), |(cursor, mut fetch)| async move {
        let cursor = cursor?;
        match fetch(cursor).await {
            Ok((items, next)) => {
                let page = stream::iter(items.into_iter().map(Ok));
                Some((page.left_stream(), (next, fetch)))
            }
            Err(e) => Some((stream::iter([Err(e)]).right_stream(), (None, fetch))),
        }
    })
    .flatten()
}
