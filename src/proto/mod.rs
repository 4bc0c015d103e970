//! The protobuf messages shardpool puts on the wire, generated from the `.proto` files of the
//! repository's `proto/` directory, which are the source of truth.
//!
//! The code in `src/proto/generated/` is written by prost-build from descriptors compiled by
//! protox (a protobuf compiler in Rust: no `protoc`) and committed, so building this crate runs
//! no generator. After editing a `.proto` file, `cargo run -p shardpool-protogen` regenerates it;
//! the test suite (`cargo run -p shardpool-protogen -- --check`) fails while the two disagree.
//!
//! One module per protobuf package. [`crate::wire`] re-exports the messages under their short
//! names. [`FILES`] holds each file's descriptor for gRPC server reflection.
//!
//! ```
//! use prost::Message;
//! use shardpool::proto::helloworld::HelloRequest;
//!
//! // Field 1 (name), wire type 2 (length-delimited), 3 bytes.
//! assert_eq!(HelloRequest { name: "Bob".into() }.encode_to_vec(), b"\x0a\x03Bob");
//! ```

/// `helloworld` (proto/helloworld.proto): the Greeter's messages.
pub mod helloworld {
    include!("generated/helloworld.rs");
}

/// Packages under `grpc.`.
pub mod grpc {
    /// `grpc.health.*`.
    pub mod health {
        /// `grpc.health.v1` (proto/health.proto): the health-checking protocol.
        pub mod v1 {
            include!("generated/grpc.health.v1.rs");
        }
    }

    /// `grpc.reflection.*`.
    pub mod reflection {
        /// `grpc.reflection.v1` (proto/grpc/reflection/v1/reflection.proto): server reflection.
        /// `grpc.reflection.v1alpha` is the same on the wire and is decoded with these types.
        pub mod v1 {
            include!("generated/grpc.reflection.v1.rs");
        }
    }
}

/// Packages under `shardpool.`.
pub mod shardpool {
    /// `shardpool.v1` (proto/shardpool_admin.proto): pool metrics and the gateway's backends.
    pub mod v1 {
        include!("generated/shardpool.v1.rs");
    }
}

/// One `.proto` file of `proto/`, as gRPC server reflection serves it.
///
/// ```
/// use shardpool::proto::FILES;
///
/// let hello = FILES.iter().find(|f| f.name == "helloworld.proto").unwrap();
/// assert_eq!(hello.services, ["helloworld.Greeter"]);
/// assert!(hello.defines("helloworld.Greeter.SayHello"));
/// assert!(!hello.descriptor.is_empty());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtoFile {
    /// The file's name, relative to `proto/` (`FileDescriptorProto.name`).
    pub name: &'static str,
    /// Its protobuf package.
    pub package: &'static str,
    /// Its encoded `google.protobuf.FileDescriptorProto`, comments included.
    pub descriptor: &'static [u8],
    /// The files it imports.
    pub dependencies: &'static [&'static str],
    /// The fully qualified names of the services it defines.
    pub services: &'static [&'static str],
    /// Every fully qualified name it defines: services, methods, messages, fields, oneofs,
    /// enums and enum values.
    pub symbols: &'static [&'static str],
}

impl ProtoFile {
    /// True if this file defines the fully qualified `symbol` (a leading `.` is allowed).
    pub fn defines(&self, symbol: &str) -> bool {
        let symbol = symbol.strip_prefix('.').unwrap_or(symbol);
        self.symbols.contains(&symbol)
    }
}

include!("generated/descriptors.rs");
