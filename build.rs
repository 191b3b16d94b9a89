//! Generates the tonic service and prost messages from `proto/`, with a protoc
//! shipped by a crate so no system install is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("messenger_descriptor.bin"))
        .codec_path("crate::edge::grpc::codec::SmallBufferCodec")
        // google.rpc.Status (in SendResult) is tonic-types' own type.
        .extern_path(".google.rpc", "::tonic_types::pb")
        .compile_with_config(config, &["proto/messenger/v1/messenger.proto"], &["proto"])?;
    Ok(())
}
