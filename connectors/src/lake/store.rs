//! The lake's storage: one [`ObjectStore`] (local disk, S3, Azure, GCS or HDFS) under a
//! root prefix, driven synchronously from the writer threads.
//!
//! Every write is one `put` of a whole object: on local disk a staged file renamed into
//! place (fsynced), on the object stores a single PUT or a completed multipart upload.
//! Either way a reader sees the whole object or none of it, which is what the commit
//! protocol of the tables relies on (see `lake/mod.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// An error of the lake's storage, naming the object and the operation.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// The URL or its options are not a store this build can open.
    #[error("sinks.parquet.url `{url}`: {reason}")]
    Config {
        /// The URL as configured.
        url: String,
        /// Why it cannot be opened.
        reason: String,
    },
    /// A storage operation failed.
    #[error("lake {op} {path}: {source}")]
    Store {
        /// `put`, `get`, `list` or `delete`.
        op: &'static str,
        /// The object (or prefix) under the root.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
}

/// A root prefix in an object store, with the runtime its async client runs on.
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    root: Path,
    /// Shown in logs and errors: the configured URL.
    url: String,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lake").field("url", &self.url).finish()
    }
}

/// What [`Lake::open`] makes of a URL: a local directory or a store's scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on local disk (a plain path or `file://`).
    Local(std::path::PathBuf),
    /// HDFS through the pure-Rust client: `hdfs://namenode:port` (or a name service) and
    /// the path under it.
    Hdfs {
        /// `hdfs://host:port`.
        namenode: String,
        /// The root path on HDFS.
        path: String,
    },
    /// S3, Azure, GCS or HTTP, opened by `object_store::parse_url_opts`.
    Cloud(url::Url),
}

impl Location {
    /// Classifies `url`: no scheme (or `file:`) is local, `hdfs:`/`viewfs:` HDFS, the rest a
    /// cloud store.
    pub fn parse(url: &str) -> Result<Location, LakeError> {
        let bad = |reason: String| LakeError::Config {
            url: url.to_owned(),
            reason,
        };
        if !url.contains("://") {
            return Ok(Location::Local(std::path::PathBuf::from(url)));
        }
        let parsed = url::Url::parse(url).map_err(|e| bad(format!("not a URL: {e}")))?;
        match parsed.scheme() {
            "file" => parsed
                .to_file_path()
                .map(Location::Local)
                .map_err(|_| bad("a file URL names an absolute local path".into())),
            "hdfs" | "viewfs" => {
                let host = parsed
                    .host_str()
                    .ok_or_else(|| bad("an HDFS URL names its namenode: hdfs://host:port/path".into()))?;
                let namenode = match parsed.port() {
                    Some(port) => format!("{}://{host}:{port}", parsed.scheme()),
                    None => format!("{}://{host}", parsed.scheme()),
                };
                Ok(Location::Hdfs {
                    namenode,
                    path: parsed.path().to_owned(),
                })
            }
            "s3" | "s3a" | "az" | "adl" | "azure" | "abfs" | "abfss" | "gs" | "http" | "https" => {
                Ok(Location::Cloud(parsed))
            }
            other => Err(bad(format!(
                "unknown scheme `{other}`; expected a path, file://, s3://, az://, abfss://, gs:// or hdfs://"
            ))),
        }
    }
}

/// Refuses an option the URL's store does not know (`object_store` would ignore it, and a
/// misspelt credential would then fail far from its cause).
fn check_options(url: &url::Url, options: &BTreeMap<String, String>) -> Result<(), String> {
    use std::str::FromStr;
    for key in options.keys() {
        let lower = key.to_ascii_lowercase();
        let known = match url.scheme() {
            "s3" | "s3a" => object_store::aws::AmazonS3ConfigKey::from_str(&lower).is_ok(),
            "gs" => object_store::gcp::GoogleConfigKey::from_str(&lower).is_ok(),
            "az" | "adl" | "azure" | "abfs" | "abfss" => {
                object_store::azure::AzureConfigKey::from_str(&lower).is_ok()
            }
            "https" | "http" => {
                // An https URL may be S3-, Azure- or GCS-style; any store's key is accepted.
                object_store::aws::AmazonS3ConfigKey::from_str(&lower).is_ok()
                    || object_store::azure::AzureConfigKey::from_str(&lower).is_ok()
                    || object_store::gcp::GoogleConfigKey::from_str(&lower).is_ok()
                    || object_store::ClientConfigKey::from_str(&lower).is_ok()
            }
            _ => true,
        };
        if !known {
            return Err(format!(
                "sinks.parquet.options.{key} is not an option of the {} store",
                url.scheme()
            ));
        }
    }
    Ok(())
}

impl Lake {
    /// Opens the lake at `url` with the store's `options` (see `sinks.parquet.options`).
    pub fn open(url: &str, options: &BTreeMap<String, String>) -> Result<Lake, LakeError> {
        // The cloud clients use rustls without a built-in provider: ring, as ureq does.
        // Installing fails harmlessly when a provider is already there.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LakeError::Config {
                url: url.to_owned(),
                reason: format!("cannot start the I/O runtime: {e}"),
            })?;
        let config = |reason: String| LakeError::Config {
            url: url.to_owned(),
            reason,
        };
        let (store, root): (Arc<dyn ObjectStore>, Path) = match Location::parse(url)? {
            Location::Local(dir) => {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| config(format!("cannot create {}: {e}", dir.display())))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| config(e.to_string()))?
                    .with_fsync(true);
                (Arc::new(store), Path::default())
            }
            Location::Hdfs { namenode, path } => {
                let store = runtime
                    .block_on(async {
                        hdfs_native_object_store::HdfsObjectStoreBuilder::new()
                            .with_url(namenode.clone())
                            .with_config(options.clone())
                            .build()
                    })
                    .map_err(|e| config(format!("cannot open HDFS at {namenode}: {e}")))?;
                (Arc::new(store), Path::from(path.as_str()))
            }
            Location::Cloud(parsed) => {
                check_options(&parsed, options).map_err(config)?;
                let (store, root) = object_store::parse_url_opts(&parsed, options.clone())
                    .map_err(|e| config(e.to_string()))?;
                (Arc::from(store), root)
            }
        };
        Ok(Lake {
            store,
            root,
            url: url.to_owned(),
            runtime,
        })
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, rel: &str) -> Path {
        let mut p = self.root.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    /// Writes the whole object `rel` (replacing it atomically).
    pub fn put(&self, rel: &str, bytes: Bytes) -> Result<(), LakeError> {
        let path = self.path(rel);
        self.runtime
            .block_on(self.store.put(&path, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|source| LakeError::Store {
                op: "put",
                path: rel.to_owned(),
                source,
            })
    }

    /// The object `rel`, or `None` when there is none.
    pub fn get(&self, rel: &str) -> Result<Option<Bytes>, LakeError> {
        let path = self.path(rel);
        let got = self.runtime.block_on(async {
            match self.store.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.map_err(|source| LakeError::Store {
            op: "get",
            path: rel.to_owned(),
            source,
        })
    }

    /// The objects under the prefix `rel` (recursively), as paths relative to it with their
    /// sizes, sorted by path.
    pub fn list(&self, rel: &str) -> Result<Vec<(String, u64)>, LakeError> {
        let prefix = self.path(rel);
        let listed: Result<Vec<_>, _> = self
            .runtime
            .block_on(self.store.list(Some(&prefix)).try_collect::<Vec<_>>());
        let mut out: Vec<(String, u64)> = listed
            .map_err(|source| LakeError::Store {
                op: "list",
                path: rel.to_owned(),
                source,
            })?
            .into_iter()
            .filter_map(|meta| {
                let parts: Vec<String> = meta
                    .location
                    .prefix_match(&prefix)?
                    .map(|p| p.as_ref().to_owned())
                    .collect();
                Some((parts.join("/"), meta.size))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Deletes the object `rel`; deleting one that is gone is no error.
    pub fn delete(&self, rel: &str) -> Result<(), LakeError> {
        let path = self.path(rel);
        match self.runtime.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(LakeError::Store {
                op: "delete",
                path: rel.to_owned(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_map_to_their_backends() -> anyhow::Result<()> {
        assert_eq!(
            Location::parse("out/lake")?,
            Location::Local("out/lake".into())
        );
        assert_eq!(
            Location::parse("file:///data/lake")?,
            Location::Local("/data/lake".into())
        );
        assert_eq!(
            Location::parse("hdfs://nn1:8020/warehouse/cap")?,
            Location::Hdfs {
                namenode: "hdfs://nn1:8020".into(),
                path: "/warehouse/cap".into()
            }
        );
        for cloud in [
            "s3://bucket/cap",
            "abfss://lake@acct.dfs.core.windows.net/cap",
            "az://container/cap",
            "gs://bucket/cap",
        ] {
            assert!(
                matches!(Location::parse(cloud)?, Location::Cloud(_)),
                "{cloud}"
            );
        }
        let err = Location::parse("ftp://host/x")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("ftp") && err.contains("sinks.parquet.url"),
            "{err}"
        );
        let err = Location::parse("hdfs:///no-namenode")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("namenode"), "{err}");
        Ok(())
    }

    #[test]
    fn cloud_options_are_checked_at_open() {
        // An S3 store without a region or credentials still opens (they come from the
        // environment at the first request), but an unknown option is refused by name.
        let mut options = BTreeMap::new();
        options.insert("aws_no_such_option".to_owned(), "1".to_owned());
        let err = Lake::open("s3://bucket/cap", &options)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("aws_no_such_option"), "{err}");
    }

    #[test]
    fn hdfs_configuration_reaches_the_client() -> anyhow::Result<()> {
        // No HDFS server can run here (docs/lakehouse.md): the client is configured from the
        // URL and the options without connecting (a first operation would retry the
        // namenode for minutes). tests/e2e_lakehouse.rs writes to a real namenode when
        // CAP_TEST_HDFS_URL is set.
        let mut options = BTreeMap::new();
        options.insert(
            "dfs.client.use.datanode.hostname".to_owned(),
            "true".to_owned(),
        );
        let lake = Lake::open("hdfs://127.0.0.1:1/warehouse/cap", &options)?;
        assert_eq!(lake.url(), "hdfs://127.0.0.1:1/warehouse/cap");
        assert_eq!(lake.path("gold/t").as_ref(), "warehouse/cap/gold/t");
        Ok(())
    }

    #[test]
    fn local_objects_round_trip_and_list_sorted() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let lake = Lake::open(&dir.path().display().to_string(), &BTreeMap::new())?;
        lake.put("gold/t/b.parquet", Bytes::from_static(b"bb"))?;
        lake.put("gold/t/a.parquet", Bytes::from_static(b"a"))?;
        lake.put("gold/u/c.parquet", Bytes::from_static(b"c"))?;
        assert_eq!(
            lake.list("gold/t")?,
            vec![("a.parquet".to_owned(), 1), ("b.parquet".to_owned(), 2)]
        );
        assert_eq!(lake.get("gold/t/b.parquet")?.as_deref(), Some(&b"bb"[..]));
        assert_eq!(lake.get("gold/t/none.parquet")?, None);
        lake.delete("gold/t/a.parquet")?;
        lake.delete("gold/t/a.parquet")?;
        assert_eq!(lake.list("gold/t")?.len(), 1);
        assert!(dir.path().join("gold/u/c.parquet").exists());
        Ok(())
    }
}
