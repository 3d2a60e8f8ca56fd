//! `crm backup` / `crm restore` for the embedded mode: a consistent online copy of
//! every service's SQLite database (`VACUUM INTO`, safe while `crm serve` runs), with
//! a manifest of sizes, SHA-256 checksums and schema versions; a restore checks them
//! all before it replaces anything. Encrypted fields stay encrypted: restore with the
//! same `encryption` keys. PostgreSQL: see the README (pg_dump per service schema).
//!
//! The customers' data keys (crypto-shredding) are not in a data backup: `--keys`
//! backs up the key stores on their own, to be kept apart and briefly. Restoring
//! keys merges them into the live key store, where an erasure's tombstone wins, so
//! neither kind of backup brings an erased customer back.

use std::path::{Path, PathBuf};

use crm_platform::{config::DatabaseConfig, db::Target};
use sea_orm::{ConnectionTrait, Statement};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The services `crm` hosts, whose databases a backup holds.
pub const SERVICES: &[&str] = &[
    crm_permissions::SERVICE,
    crm_customer_profile::SERVICE,
    crm_ticketing::SERVICE,
    crm_segmentation::SERVICE,
];

/// The services with a key store (`<service>-keys.db`), which `--keys` backs up.
pub const KEYED: &[&str] = &[crm_customer_profile::SERVICE];

const MANIFEST: &str = "manifest.json";

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub created: String,
    /// A backup of the key stores (`crm backup --keys`), not of the data.
    #[serde(default)]
    pub keys: bool,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub service: String,
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    /// The highest schema migration applied.
    pub schema_version: i64,
}

/// The SQLite file of `service`, or why there is none.
fn sqlite_path(cfg: &DatabaseConfig, service: &str, keys: bool) -> anyhow::Result<PathBuf> {
    let target = Target::resolve_hosted(cfg, service, true);
    let target = if keys { target.companion("keys") } else { target };
    match target {
        Target::Sqlite { url } => {
            let path = url
                .strip_prefix("sqlite://")
                .unwrap_or(&url)
                .split('?')
                .next()
                .unwrap_or_default()
                .to_owned();
            Ok(PathBuf::from(path))
        }
        Target::Postgres { .. } => anyhow::bail!(
            "crm backup copies the embedded SQLite databases; on PostgreSQL use the procedure in the README (pg_dump per service schema)"
        ),
    }
}

fn sha256_file(path: &Path) -> anyhow::Result<(u64, String)> {
    let bytes = std::fs::read(path)?;
    let digest = Sha256::digest(&bytes);
    Ok((bytes.len() as u64, digest.iter().map(|b| format!("{b:02x}")).collect()))
}

fn file_name(service: &str, keys: bool) -> String {
    if keys {
        format!("{service}-keys.db")
    } else {
        format!("{service}.db")
    }
}

/// Copies every service database (with `keys`, every key store instead) into `out`
/// (which must not exist or be empty).
pub async fn backup(cfg: &DatabaseConfig, out: &Path, keys: bool) -> anyhow::Result<Manifest> {
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        anyhow::bail!("{} is not empty: back up into a new directory", out.display());
    }
    std::fs::create_dir_all(out)?;
    let mut files = Vec::new();
    for service in if keys { KEYED } else { SERVICES } {
        let path = sqlite_path(cfg, service, keys)?;
        if !path.exists() {
            anyhow::bail!(
                "{} has no database at {} (start `crm serve` once first)",
                service,
                path.display()
            );
        }
        let target = Target::Sqlite {
            url: format!("sqlite://{}", path.display()),
        };
        let db = crm_platform::db::connect(&target, 1).await?;
        let file = file_name(service, keys);
        let dest = out.join(&file);
        let quoted = dest.display().to_string().replace('\'', "''");
        // One transaction's snapshot of the whole database, while writers go on.
        db.execute_unprepared(&format!("VACUUM INTO '{quoted}'")).await?;
        let version = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations",
            ))
            .await?
            .map(|r| r.try_get::<i64>("", "v"))
            .transpose()?
            .unwrap_or(0);
        db.close().await?;
        let (bytes, sha256) = sha256_file(&dest)?;
        files.push(FileEntry {
            service: (*service).to_owned(),
            file,
            bytes,
            sha256,
            schema_version: version,
        });
    }
    let manifest = Manifest {
        format: 1,
        created: chrono::Utc::now().to_rfc3339(),
        keys,
        files,
    };
    std::fs::write(out.join(MANIFEST), serde_json::to_vec_pretty(&manifest)?)?;
    Ok(manifest)
}

/// Checks a backup in `from` against its manifest; returns the manifest.
pub fn verify(from: &Path) -> anyhow::Result<Manifest> {
    let manifest: Manifest = serde_json::from_slice(&std::fs::read(from.join(MANIFEST))?)?;
    anyhow::ensure!(manifest.format == 1, "unknown backup format {}", manifest.format);
    for f in &manifest.files {
        let known = if manifest.keys { KEYED } else { SERVICES };
        anyhow::ensure!(
            known.contains(&f.service.as_str()) && f.file == file_name(&f.service, manifest.keys),
            "the manifest names an unknown file {}",
            f.file
        );
        let (bytes, sha256) = sha256_file(&from.join(&f.file))?;
        anyhow::ensure!(
            bytes == f.bytes && sha256 == f.sha256,
            "{} does not match its checksum: the backup is damaged",
            f.file
        );
    }
    Ok(manifest)
}

/// Replaces the service databases with the backup in `from`. `crm serve` must be
/// stopped. Refuses to overwrite existing databases unless `force`. A key-store
/// backup is merged instead: keys the live store lacks come back, and a live
/// tombstone (an erasure since the backup) is never overwritten.
pub async fn restore(cfg: &DatabaseConfig, from: &Path, force: bool) -> anyhow::Result<Restored> {
    let manifest = verify(from)?;
    let mut restored = Restored {
        merged_keys: 0,
        manifest,
    };
    if !restored.manifest.keys {
        for f in &restored.manifest.files {
            let dest = sqlite_path(cfg, &f.service, false)?;
            if dest.exists() && !force {
                anyhow::bail!(
                    "{} exists: stop `crm serve` and pass --force to replace it with the backup",
                    dest.display()
                );
            }
        }
    }
    for f in &restored.manifest.files {
        let dest = sqlite_path(cfg, &f.service, restored.manifest.keys)?;
        if restored.manifest.keys && dest.exists() {
            restored.merged_keys += merge_keys(&from.join(&f.file), &dest).await?;
            continue;
        }
        replace_file(&from.join(&f.file), &dest)?;
    }
    Ok(restored)
}

/// What a restore did.
pub struct Restored {
    pub manifest: Manifest,
    /// Keys added to a live key store (key-store backups).
    pub merged_keys: u64,
}

fn replace_file(source: &Path, dest: &Path) -> anyhow::Result<()> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let staged = dest.with_extension("db.restoring");
    std::fs::copy(source, &staged)?;
    // The old write-ahead log belongs to the old database.
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", dest.display()));
        if side.exists() {
            std::fs::remove_file(side)?;
        }
    }
    std::fs::rename(&staged, dest)?;
    Ok(())
}

/// Adds the backup's keys (and tombstones) the live key store lacks; returns how many.
async fn merge_keys(backup: &Path, live: &Path) -> anyhow::Result<u64> {
    let open = |path: &Path| Target::Sqlite {
        url: format!("sqlite://{}", path.display()),
    };
    let saved = crm_platform::db::connect(&open(backup), 1).await?;
    let rows = crm_platform::db::query(
        &saved,
        "SELECT customer_id, wrapped, wrap_key, create_us, erase_us FROM data_keys",
        vec![],
    )
    .await?;
    let db = crm_platform::db::connect(&open(live), 1).await?;
    let mut added = 0;
    for r in &rows {
        let id: String = r.try_get("", "customer_id")?;
        let wrapped: Option<Vec<u8>> = r.try_get("", "wrapped")?;
        let wrap_key: String = r.try_get("", "wrap_key")?;
        let create_us: i64 = r.try_get("", "create_us")?;
        let erase_us: Option<i64> = r.try_get("", "erase_us")?;
        added += crm_platform::db::exec(
            &db,
            "INSERT INTO data_keys (customer_id, wrapped, wrap_key, create_us, erase_us) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (customer_id) DO NOTHING",
            vec![id.into(), wrapped.into(), wrap_key.into(), create_us.into(), erase_us.into()],
        )
        .await?;
    }
    saved.close().await?;
    db.close().await?;
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_backup_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("permissions.db");
        std::fs::write(&file, b"data").unwrap();
        let (bytes, sha256) = sha256_file(&file).unwrap();
        let manifest = Manifest {
            format: 1,
            created: String::new(),
            keys: false,
            files: vec![FileEntry {
                service: "permissions".into(),
                file: "permissions.db".into(),
                bytes,
                sha256,
                schema_version: 1,
            }],
        };
        std::fs::write(dir.path().join(MANIFEST), serde_json::to_vec(&manifest).unwrap()).unwrap();
        assert_eq!(verify(dir.path()).unwrap(), manifest);
        std::fs::write(&file, b"dat4").unwrap();
        assert!(verify(dir.path()).unwrap_err().to_string().contains("checksum"));
    }
}
