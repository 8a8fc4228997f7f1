//! Lineage at scale (being written).
fn main() {}
