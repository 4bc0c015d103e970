//! `cargo run -p shardpool-protogen`: regenerates src/proto/generated/ from proto/.
//! `cargo run -p shardpool-protogen -- --check`: fails (exit 1) when the committed files differ.

use std::process::ExitCode;

fn main() -> ExitCode {
    let root = shardpool_protogen::repo_root();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [] => shardpool_protogen::write(&root).map(|n| {
            println!(
                "shardpool-protogen: wrote {n} files to {}",
                shardpool_protogen::OUT
            )
        }),
        [flag] if flag == "--check" => shardpool_protogen::check(&root).map(|()| {
            println!(
                "shardpool-protogen: {} is up to date with {}/",
                shardpool_protogen::OUT,
                shardpool_protogen::PROTOS
            )
        }),
        _ => Err("usage: shardpool-protogen [--check]".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardpool-protogen: {e}");
            ExitCode::FAILURE
        }
    }
}
