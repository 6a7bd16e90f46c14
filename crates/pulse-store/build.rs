//! `sqlx::migrate!` embeds the migration files at compile time but cannot tell cargo it read
//! them: without this, a new migration is left out of a build until a source file changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
