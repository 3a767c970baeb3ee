//! What each stage records in its `detail`: one struct per stage, written by the stage
//! and read by the others through it, so the contract between crates is checked by the
//! compiler instead of by string keys.
//!
//! Optional fields are left out when unset (`skip_serializing_none`), except those
//! marked `serialize_always`, which the document has always carried as `null`. Every
//! struct reads leniently (a missing field takes its default) and keeps the fields
//! it does not know in `extra`, so a record from a newer berth survives an older stage
//! in the middle of a pipe. The JSON is the `berth/1` document's: a field absent here was
//! absent before. README's "The deploy document" lists these fields.
//!
//! Stages: [`Preflight`], [`Pull`], [`Backup`], [`Drill`], [`Migrate`], [`Maintenance`],
//! [`Swap`], [`Converge`], [`Health`] (healthwait, smoke), [`Rollback`], [`NoDocument`]
//! (a stage that exited without writing the document). A skipped stage adds `reason`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use serde_with::skip_serializing_none;

/// A stage's detail, as the document holds it.
pub type Detail = Map<String, Value>;

/// Merge `rec` into `detail` (its fields replace the same keys).
pub fn put<T: Serialize>(detail: &mut Detail, rec: &T) {
    match serde_json::to_value(rec) {
        Ok(Value::Object(m)) => detail.extend(m),
        // Every record here is a struct of plain fields: it serializes to an object.
        other => unreachable!("a stage record serializes to an object, not {other:?}"),
    }
}

/// `rec` as a detail object.
pub fn to_detail<T: Serialize>(rec: &T) -> Detail {
    let mut m = Detail::new();
    put(&mut m, rec);
    m
}

/// Read a record from a detail. An error names the field of the wrong type.
pub fn read<T: DeserializeOwned>(detail: &Detail) -> Result<T, serde_json::Error> {
    T::deserialize(Value::Object(detail.clone()))
}

/// Read, change and write back the record in `detail` (a detail of the wrong shape starts
/// from the default; the fields it does not know are kept).
pub fn update<T: Serialize + DeserializeOwned + Default>(
    detail: &mut Detail,
    f: impl FnOnce(&mut T),
) {
    let mut rec: T = read(detail).unwrap_or_default();
    f(&mut rec);
    *detail = to_detail(&rec);
}

/// A stage record: its fields, and the ones it did not know.
pub trait Record: Serialize + DeserializeOwned + Default {
    fn extra(&self) -> &Detail;
}

macro_rules! records {
    ($($t:ty),* $(,)?) => {
        $(impl Record for $t {
            fn extra(&self) -> &Detail {
                &self.extra
            }
        })*
    };
}

records!(
    Preflight,
    Pull,
    Swap,
    Converge,
    Maintenance,
    Health,
    Backup,
    Drill,
    Migrate,
    Rollback,
    NoDocument,
);

/// Whether `key` is a field of the record `T` (not one it would keep in `extra`): for
/// code that picks fields by name, such as the report's renderer.
pub fn defines<T: Record>(key: &str) -> bool {
    let mut d = Detail::new();
    d.insert(key.to_string(), Value::Null);
    match read::<T>(&d) {
        // null is not a valid value for this field: the record knows it.
        Err(_) => true,
        Ok(r) => !r.extra().contains_key(key),
    }
}

/// `Option<Option<T>>` for a field that is absent (`None`), `null` (`Some(None)`) or set.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn yes() -> bool {
    true
}

/// A service and its image reference.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NamedImage {
    pub name: String,
    pub image: String,
    #[serde(flatten)]
    pub extra: Detail,
}

/// `preflight` (berth-swap preflight).
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Preflight {
    pub docker_version: Option<String>,
    pub compose_version: Option<String>,
    pub services: Option<Vec<String>>,
    pub images: Option<Vec<NamedImage>>,
    pub pin_file: Option<String>,
    /// The pre-deploy check, quoted for a shell, its time and exit status (null: a signal).
    pub test_command: Option<String>,
    pub test_ms: Option<u64>,
    #[serde(default, deserialize_with = "nullable")]
    pub test_exit: Option<Option<i32>>,
    #[serde(flatten)]
    pub extra: Detail,
}

/// `pull`: one entry per service.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pull {
    pub services: Vec<Pulled>,
    #[serde(flatten)]
    pub extra: Detail,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pulled {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub pulled: bool,
    pub duration_ms: u64,
    #[serde(flatten)]
    pub extra: Detail,
}

/// A container as a swap record names it.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerRef {
    /// The short ID (of the task, on Swarm).
    pub id: String,
    /// The container's name (on Swarm: the service's, `STACK_SERVICE`).
    pub name: String,
    pub image: String,
    /// The Swarm node that runs the task (`--engine swarm` only).
    pub node: Option<String>,
    #[serde(flatten)]
    pub extra: Detail,
}

/// One service of a [`Swap`].
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SwappedService {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub pulled: bool,
    /// Behind nginx (a record without the field: yes).
    #[serde(default = "yes")]
    pub proxied: bool,
    #[serialize_always]
    pub upstream_file: Option<String>,
    pub old_containers: Vec<ContainerRef>,
    pub new_containers: Vec<ContainerRef>,
    #[serialize_always]
    pub time_to_ready_ms: Option<u64>,
    pub stop_grace_ms: u64,
    /// Old containers still running at the end of their grace period, killed (SIGKILL):
    /// what they held was cut (0 when every one stopped gracefully).
    pub killed: Option<u64>,
    /// The HAProxy backend whose server slots it took (`--proxy haproxy`).
    pub haproxy_backend: Option<String>,
    #[serde(flatten)]
    pub extra: Detail,
}

/// `swap` (also inside a [`Rollback`]'s `swap`). A swap that ran records the timings; a
/// dry run records none; a swap that failed after its switch records only `switched` and
/// `serving` ([`Swap::switched_record`]).
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Swap {
    pub tag: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub previous_tag: Option<Option<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<SwappedService>,
    pub ready_ms: Option<u64>,
    pub switch_ms: Option<u64>,
    pub switched_at: Option<String>,
    pub drain_ms: Option<u64>,
    /// The drain's bound: how long the old containers got after the switch to finish what
    /// they held before they were stopped.
    pub drain_limit_ms: Option<u64>,
    /// Where that bound came from: `--drain`, `stop_grace_period` (the longest of the
    /// services that take traffic) or `default` (5 s).
    pub drain_from: Option<String>,
    /// Whether the proxy held nothing on the old containers any more before the bound
    /// (null: not observable, the whole bound was waited; absent: nothing drained).
    #[serde(default, deserialize_with = "nullable")]
    pub drained: Option<Option<bool>>,
    pub stop_ms: Option<u64>,
    pub total_ms: Option<u64>,
    /// A failed swap that had switched: the new release serves, only a rollback undoes it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub switched: bool,
    /// The tag that serves after such a failure.
    pub serving: Option<String>,
    #[serde(flatten)]
    pub extra: Detail,
}

impl Swap {
    /// The record of a swap that failed after traffic moved to `serving`.
    pub fn switched_record(serving: &str) -> Swap {
        Swap {
            switched: true,
            serving: Some(serving.to_string()),
            ..Swap::default()
        }
    }

    /// The swapped service by name.
    pub fn service(&self, name: &str) -> Option<&SwappedService> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// `converge` (berth-swap converge): the services whose interrupted swap it finished.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Converge {
    pub converged: Vec<String>,
    #[serde(flatten)]
    pub extra: Detail,
}

/// `maintenance` (berth-swap maintenance on|off).
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Maintenance {
    pub file: Option<String>,
    /// With HAProxy: the map's file on this host that berth keeps in step with the live
    /// map (a restarted HAProxy reads it); absent when the map is not on a bind mount.
    pub map_file: Option<String>,
    /// `on` or `off`.
    pub state: Option<String>,
    /// When the window opened (null: unknown).
    #[serde(default, deserialize_with = "nullable")]
    pub since: Option<Option<String>>,
    /// Whether it was already in that state.
    pub already: Option<bool>,
    /// `off`: how long the window was open (null: unknown).
    #[serde(default, deserialize_with = "nullable")]
    pub window_ms: Option<Option<u64>>,
    #[serde(flatten)]
    pub extra: Detail,
}

/// One target of a [`Health`] wait.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TargetResult {
    pub target: String,
    pub kind: String,
    pub ready: bool,
    pub died: bool,
    pub attempts: u32,
    #[serialize_always]
    pub time_to_ready_ms: Option<u64>,
    #[serialize_always]
    pub last_error: Option<String>,
    #[serde(flatten)]
    pub extra: Detail,
}

/// `healthwait`, `smoke` or any `--stage` name of berth-healthwait.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Health {
    pub ready: bool,
    pub elapsed_ms: u64,
    pub timeout_ms: u64,
    pub interval_ms: u64,
    pub successes: u32,
    pub targets: Vec<TargetResult>,
    #[serde(flatten)]
    pub extra: Detail,
}

/// A backup's rotation after it was taken.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rotation {
    pub kept: usize,
    pub deleted: Vec<String>,
    #[serde(flatten)]
    pub extra: Detail,
}

/// One off-site copy of a backup.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OffsiteCopy {
    /// The destination (`restic:...`, `rclone:...`).
    pub to: String,
    pub snapshot: Option<String>,
    /// Snapshots forgotten by the off-site rotation.
    pub forgotten: Option<usize>,
    pub rotation_error: Option<String>,
    /// The copy failed (the local backup is good).
    pub error: Option<String>,
    #[serde(flatten)]
    pub extra: Detail,
}

/// `backup` (berth-backup pg, berth-backup volume).
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Backup {
    /// `pg` or `volume`.
    pub kind: Option<String>,
    pub target: Option<String>,
    /// The archive (absolute).
    pub file: Option<String>,
    pub manifest: Option<String>,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    /// `none`, `read`, `restore` or `failed`.
    pub verification: Option<String>,
    pub duration_ms: Option<u64>,
    pub server_version: Option<String>,
    pub tables: Option<u64>,
    /// The command that restores it into this project.
    pub restore_command: Option<String>,
    /// pg: `service db` or the URL without its password.
    pub source: Option<String>,
    /// pg: the compose service of the database.
    pub service: Option<String>,
    /// volume: the docker volume.
    pub volume: Option<String>,
    pub rotation: Option<Rotation>,
    pub copies: Option<Vec<OffsiteCopy>>,
    #[serde(flatten)]
    pub extra: Detail,
}

/// `drill` (berth-backup drill): the backup it restored.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Drill {
    pub file: String,
    pub bytes: Option<u64>,
    pub backup_created_at: Option<String>,
    pub target: Option<String>,
    #[serde(flatten)]
    pub extra: Detail,
}

/// Where the backup a migration stands on restores to.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MigrateBackup {
    #[serialize_always]
    pub file: Option<String>,
    /// `{"service": NAME}`, `{"url": URL}` or null.
    #[serialize_always]
    pub target: Option<Value>,
    #[serialize_always]
    pub verification: Option<String>,
    #[serde(flatten)]
    pub extra: Detail,
}

/// A running container of the old version, probed after the migration.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OldContainer {
    pub container: String,
    pub image: String,
    #[serialize_always]
    pub url: Option<String>,
    pub ready: bool,
    #[serialize_always]
    pub last_error: Option<String>,
    #[serde(flatten)]
    pub extra: Detail,
}

/// `migrate` (berth-migrate). Filled as the migration goes, so a failure records how
/// far it got.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Migrate {
    pub service: Option<String>,
    pub tag: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    pub container: Option<String>,
    pub log: Option<String>,
    pub timeout_ms: Option<u64>,
    pub backup_required: Option<bool>,
    /// The backup found in the document (null: none).
    #[serde(default, deserialize_with = "nullable")]
    pub backup: Option<Option<MigrateBackup>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_run: Vec<String>,
    pub image: Option<String>,
    pub migration_ms: Option<u64>,
    pub containers_left: Option<usize>,
    /// `exited`, `killed`, `timed_out` or `interrupted`.
    pub ended: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub exit_status: Option<Option<i32>>,
    /// Whether every running old container still answered ready (null: unknown).
    #[serde(default, deserialize_with = "nullable")]
    pub old_version_ready: Option<Option<bool>>,
    pub old_version: Option<Vec<OldContainer>>,
    pub log_tail: Option<String>,
    /// A failed migration: the command that restores the backup taken before it.
    pub restore_command: Option<String>,
    #[serde(flatten)]
    pub extra: Detail,
}

/// `rollback`. After a failure: `from`, `to`, `after_stage`, `services`, then the
/// `swap` it ran (or `serving`, when another deploy serves and nothing was touched, or
/// `manual_command`, when the rollback itself failed).
/// `berth-rollback --to`: `from` (null: unknown), `to`, `swap`. In the ledger, the mark
/// on the release rolled back from: `rolled_back_to`, `by_deploy`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rollback {
    #[serde(default, deserialize_with = "nullable")]
    pub from: Option<Option<String>>,
    pub to: Option<String>,
    pub after_stage: Option<String>,
    pub services: Option<Vec<String>>,
    pub swap: Option<Swap>,
    /// Why nothing was rolled back: what serves instead.
    pub serving: Option<String>,
    /// A rollback that failed: the command a person runs to finish it.
    pub manual_command: Option<String>,
    pub rolled_back_to: Option<String>,
    pub by_deploy: Option<String>,
    #[serde(flatten)]
    pub extra: Detail,
}

/// A stage that exited without writing the document (berth-report record-failure).
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NoDocument {
    pub no_document: bool,
    pub exit_status: i32,
    #[serde(flatten)]
    pub extra: Detail,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Detail {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn unknown_fields_and_nulls_survive_a_round_trip() {
        let d = obj(
            json!({"from": null, "to": "v1", "swap": {"tag": "v1", "previous_tag": null,
                          "services": [{"name": "web", "new_containers": [{"id": "ab", "x": 1}]}],
                          "future": [1]}, "later": true}),
        );
        let r: Rollback = read(&d).unwrap();
        assert_eq!(r.from, Some(None));
        assert_eq!(r.to.as_deref(), Some("v1"));
        let swap = r.swap.as_ref().unwrap();
        assert!(
            swap.services[0].proxied,
            "a record without `proxied` is behind nginx"
        );
        assert_eq!(swap.service("web").unwrap().new_containers[0].id, "ab");
        let back = to_detail(&r);
        assert_eq!(back["later"], json!(true));
        assert_eq!(back["swap"]["future"], json!([1]));
        assert_eq!(back["swap"]["previous_tag"], Value::Null);
        assert_eq!(
            back["swap"]["services"][0]["new_containers"][0]["x"],
            json!(1)
        );
        assert_eq!(back["from"], Value::Null);
        assert!(!back.contains_key("after_stage"));
    }

    #[test]
    fn a_failed_swap_records_only_that_it_switched() {
        let d = to_detail(&Swap::switched_record("v2"));
        assert_eq!(
            Value::Object(d.clone()),
            json!({"switched": true, "serving": "v2"})
        );
        assert!(read::<Swap>(&d).unwrap().switched);
        assert!(!read::<Swap>(&Detail::new()).unwrap().switched);
    }

    #[test]
    fn update_adds_fields_and_keeps_the_others() {
        let mut d = obj(json!({"file": "/b/x.dump", "reason": "r"}));
        update(&mut d, |b: &mut Backup| b.copies = Some(vec![]));
        assert_eq!(
            Value::Object(d),
            json!({"file": "/b/x.dump", "copies": [], "reason": "r"})
        );
    }

    #[test]
    fn defines_tells_fields_from_extras() {
        assert!(defines::<Backup>("file"));
        assert!(defines::<Rollback>("to"));
        assert!(defines::<Swap>("services"));
        assert!(defines::<Health>("ready"));
        assert!(!defines::<Backup>("archive"));
        assert!(!defines::<Rollback>("to_tag"));
    }

    #[test]
    fn a_wrong_type_is_an_error_naming_it() {
        let e = read::<Backup>(&obj(json!({"bytes": "many"}))).unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
    }
}
