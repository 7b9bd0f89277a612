//! Generates the tonic server for `fixtures/transcode/users.proto`, the gRPC service the
//! grpc-transcode tests start. Compiled with protox (pure Rust), like the sync protocol.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "fixtures/transcode/users.proto";
    println!("cargo:rerun-if-changed={file}");
    let descriptors = protox::compile([file], ["fixtures/transcode"])?;
    // The same definitions compiled, for the test that uploads a base64 FileDescriptorSet.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("users.descriptor_set.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .compile_fds(descriptors)?;
    Ok(())
}
