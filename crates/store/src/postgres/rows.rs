//! Typed column access for PostgreSQL rows; a type mismatch is a store error, never a panic.

use crate::StoreError;
use std::str::FromStr;
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

pub(crate) trait PgRowExt {
    fn col<'a, T: FromSql<'a>>(&'a self, idx: usize) -> Result<T, StoreError>;
    fn parsed<T: FromStr>(&self, idx: usize) -> Result<T, StoreError>;
}

impl PgRowExt for Row {
    fn col<'a, T: FromSql<'a>>(&'a self, idx: usize) -> Result<T, StoreError> {
        self.try_get(idx)
            .map_err(|e| StoreError::Internal(format!("column {idx}: {e}")))
    }

    fn parsed<T: FromStr>(&self, idx: usize) -> Result<T, StoreError> {
        let text: String = self.col(idx)?;
        text.parse()
            .map_err(|_| StoreError::Internal(format!("unexpected value {text:?} in store")))
    }
}

/// Maps every row, stopping at the first error.
pub(crate) fn map_rows<T>(
    rows: &[Row],
    map: impl Fn(&Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(map).collect()
}
