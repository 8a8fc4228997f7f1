//! probe
use waybill_store::engine::{Engine, EngineQuery};
fn main() {
    let library = waybill_store::engine::default_library_path();
    let dir = std::path::PathBuf::from("target/bench-lineage");
    let engine = Engine::open(&library, &dir).unwrap();
    let q = |sql: &str| match engine.query(EngineQuery { sql, format: "TabSeparated", database: None, params: &[] }) {
        Ok(out) => println!("{sql}\n=> {}", String::from_utf8_lossy(&out.data)),
        Err(err) => println!("{sql}\n=> ERR {err}"),
    };
    q("SELECT 1");
    q("SELECT name, value FROM system.settings WHERE name IN ('log_queries','max_threads','max_memory_usage','use_index_for_in_with_subqueries','optimize_move_to_prewhere','max_insert_block_size')");
    q("SYSTEM FLUSH LOGS");
    q("SELECT count() FROM system.query_log");
    q("SELECT version()");
    q("SELECT count() FROM system.merges");
    engine.close();
}
