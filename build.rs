//! Compiles `proto/cx/v1/*.proto` with protox (pure Rust), so no `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/cx/v1/event.proto",
        "proto/cx/v1/alert.proto",
        "proto/cx/v1/journey.proto",
        "proto/cx/v1/state.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
