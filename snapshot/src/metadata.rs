//! Snapshot metadata in a redb database, shared by both snapshotters.
//!
//! One table maps every key (active, view and committed share a namespace) to
//! a record with the numeric id that names the snapshot's directory; another
//! lists each snapshot's children (parent, child), so that a removal asks
//! only whether its key has any rather than reading every record. Write
//! transactions are exclusive, also across processes, so an id handed out
//! inside one belongs to nobody else: a directory already at that id is an
//! orphan of a crash and may be replaced.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ocidist_images::store::SharedDatabase;
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{Error, Info, Kind, Labels, Result};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// (parent, child) for every snapshot with a parent.
const CHILDREN: TableDefinition<(&str, &str), ()> = TableDefinition::new("children");
/// In `COUNTERS`: the `next_id` as of which `CHILDREN` lists every
/// snapshot's parent. A database written before the table existed, or
/// since by a version that does not keep it (its creations move `next_id`
/// on), gets the list built again before it is relied on.
const CHILDREN_LISTED: &str = "children_listed";
const NEXT_ID: &str = "next_id";

/// Opens `CHILDREN` in `txn`, built again from the records first unless it
/// is known complete (see [`CHILDREN_LISTED`]).
fn children_table(txn: &redb::WriteTransaction) -> Result<Children<'_>> {
    let mut counters = txn.open_table(COUNTERS).map_err(db_error)?;
    let counter = |name| -> Result<Option<u64>> {
        Ok(counters.get(name).map_err(db_error)?.map(|v| v.value()))
    };
    let next_id = counter(NEXT_ID)?.unwrap_or(1);
    let mut children = txn.open_table(CHILDREN).map_err(db_error)?;
    if counter(CHILDREN_LISTED)? != Some(next_id) {
        children.retain(|_, ()| false).map_err(db_error)?;
        let table = txn.open_table(SNAPSHOTS).map_err(db_error)?;
        for entry in table.iter().map_err(db_error)? {
            let (key, value) = entry.map_err(db_error)?;
            if let Some(parent) = decode(key.value(), value.value())?.parent {
                children
                    .insert((parent.as_str(), key.value()), ())
                    .map_err(db_error)?;
            }
        }
        counters
            .insert(CHILDREN_LISTED, next_id)
            .map_err(db_error)?;
    }
    Ok(children)
}

/// What the database keeps of one snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) id: u64,
    pub(crate) kind: Kind,
    pub(crate) parent: Option<String>,
    #[serde(default)]
    pub(crate) labels: Labels,
    pub(crate) created_ns: u128,
    pub(crate) updated_ns: u128,
    /// Disk usage, measured at commit (committed snapshots only).
    #[serde(default)]
    pub(crate) usage: Option<(u64, u64)>,
}

impl Record {
    pub(crate) fn info(&self, name: &str) -> Info {
        Info {
            name: name.to_string(),
            parent: self.parent.clone(),
            kind: self.kind,
            labels: self.labels.clone(),
            created: from_ns(self.created_ns),
            updated: from_ns(self.updated_ns),
        }
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn from_ns(ns: u128) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns.min(u64::MAX as u128) as u64)
}

fn db_error(e: impl Into<redb::Error>) -> Error {
    match e.into() {
        // Said as what it is, for callers that can make room.
        redb::Error::Io(source) if is_full(&source) => {
            Error::io("write", "snapshot metadata", source)
        }
        other => Error::Metadata(other.to_string()),
    }
}

/// Whether `e` says the disk (or the user's quota) is full.
pub(crate) fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Metadata(format!("snapshot {key:?}: corrupt record: {e}")))
}

/// Labels as stored: an empty value is no label, as in containerd.
fn without_empty(mut labels: Labels) -> Labels {
    labels.retain(|_, value| !value.is_empty());
    labels
}

fn encode(record: &Record) -> Vec<u8> {
    serde_json::to_vec(record).unwrap_or_default()
}

pub(crate) fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("empty snapshot key".into()));
    }
    Ok(())
}

/// Refuses labels the content store refuses (over containerd's 4096 bytes
/// of key and value, an empty key), naming the snapshot.
fn validate_labels(key: &str, labels: &Labels) -> Result<()> {
    ocidist_content::helpers::validate_labels(labels).map_err(|e| match e {
        ocidist_content::Error::InvalidArgument(why) => {
            Error::InvalidArgument(format!("snapshot {key:?}: {why}"))
        }
        other => other.into(),
    })
}

/// A parent that is active or a view, refused as containerd's metadata
/// store refuses it: an invalid argument.
fn not_committed(parent: &str) -> Error {
    Error::InvalidArgument(format!("snapshot {parent:?}: parent is not committed"))
}

/// The metadata database.
pub(crate) struct MetaStore {
    db: SharedDatabase,
}

type Table<'t> = redb::Table<'t, &'static str, &'static [u8]>;
type Children<'t> = redb::Table<'t, (&'static str, &'static str), ()>;

/// A child of `parent`, if it has any.
fn first_child(children: &Children<'_>, parent: &str) -> Result<Option<String>> {
    let mut range = children.range((parent, "")..).map_err(db_error)?;
    let Some(entry) = range.next() else {
        return Ok(None);
    };
    let (key, _) = entry.map_err(db_error)?;
    let (of, child) = key.value();
    Ok((of == parent).then(|| child.to_string()))
}

fn lookup(table: &Table<'_>, key: &str) -> Result<Option<Record>> {
    match table.get(key).map_err(db_error)? {
        Some(v) => decode(key, v.value()).map(Some),
        None => Ok(None),
    }
}

/// The ids of `parent` and its ancestors, nearest first.
fn parent_ids(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    parent: Option<&str>,
) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    let mut next = parent.map(str::to_string);
    while let Some(name) = next {
        let record = match table.get(name.as_str()).map_err(db_error)? {
            Some(v) => decode(&name, v.value())?,
            None => return Err(Error::NotFound { key: name }),
        };
        ids.push(record.id);
        next = record.parent;
        if ids.len() > 100_000 {
            return Err(Error::Metadata("parent chain loops".into()));
        }
    }
    Ok(ids)
}

/// A snapshot [`MetaStore::create_all`] adds.
pub(crate) struct NewSnapshot<'a> {
    pub(crate) key: &'a str,
    pub(crate) parent: Option<&'a str>,
    pub(crate) kind: Kind,
    pub(crate) labels: Labels,
}

/// One commit for [`MetaStore::commit_all`]: the active `key` becomes the
/// committed `name`.
pub(crate) struct Commit<'a> {
    pub(crate) name: &'a str,
    pub(crate) key: &'a str,
    pub(crate) labels: Labels,
    /// Set only for a snapshot prepared without one.
    pub(crate) parent: Option<&'a str>,
    /// Disk usage measured before the commit.
    pub(crate) usage: (u64, u64),
}

fn commit_in(
    table: &mut Table<'_>,
    children: &mut Children<'_>,
    commit: Commit<'_>,
) -> Result<Record> {
    let Commit {
        name,
        key,
        labels,
        parent,
        usage,
    } = commit;
    // An empty parent is none, as in containerd (Go's "" for none).
    let parent = parent.filter(|p| !p.is_empty());
    // The name first, as containerd makes its bucket first: a name in use
    // is AlreadyExists whatever the key.
    if lookup(table, name)?.is_some() {
        return Err(Error::AlreadyExists { key: name.into() });
    }
    let Some(mut record) = lookup(table, key)? else {
        return Err(Error::NotFound { key: key.into() });
    };
    if record.kind != Kind::Active {
        return Err(Error::precondition(
            key,
            format!(
                "only an active snapshot can be committed, not a {}",
                record.kind
            ),
        ));
    }
    if let Some(p) = parent {
        match &record.parent {
            Some(existing) if existing != p => {
                return Err(Error::InvalidArgument(format!(
                    "snapshot {key:?}: parent {existing:?} was set at prepare; \
                     cannot commit onto {p:?}"
                )));
            }
            Some(_) => {}
            None => {
                let Some(rec) = lookup(table, p)? else {
                    return Err(Error::NotFound { key: p.into() });
                };
                if rec.kind != Kind::Committed {
                    // FailedPrecondition here, as containerd's CommitActive
                    // (a prepare on such a parent is InvalidArgument).
                    return Err(Error::precondition(
                        p,
                        "cannot commit onto it: it is not committed",
                    ));
                }
                record.parent = Some(p.to_string());
            }
        }
    }
    table.remove(key).map_err(db_error)?;
    if let Some(p) = &record.parent {
        children.remove((p.as_str(), key)).map_err(db_error)?;
        children.insert((p.as_str(), name), ()).map_err(db_error)?;
    }
    let now = now_ns();
    record.kind = Kind::Committed;
    record.created_ns = now;
    record.updated_ns = now;
    record.usage = Some(usage);
    // Labels given at commit replace those of the active snapshot.
    record.labels = without_empty(labels);
    table
        .insert(name, encode(&record).as_slice())
        .map_err(db_error)?;
    Ok(record)
}

impl MetaStore {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let db = ocidist_images::store::open_shared_database(path).map_err(|e| {
            Error::Metadata(format!(
                "open {}: {}",
                path.display(),
                ocidist_content::Report::new(&e)
            ))
        })?;
        Ok(MetaStore { db })
    }

    /// The record of `key` alone (its parents not looked up).
    pub(crate) fn record(&self, key: &str) -> Result<Record> {
        self.read_record(key, |_, record| Ok(record))
    }

    /// Whether a snapshot (of any kind) has `key`.
    pub(crate) fn exists(&self, key: &str) -> Result<bool> {
        match self.read_record(key, |_, _| Ok(())) {
            Ok(()) => Ok(true),
            Err(Error::NotFound { key: missing }) if missing == key => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The record of `key` and the ids of its parents, nearest first.
    pub(crate) fn get(&self, key: &str) -> Result<(Record, Vec<u64>)> {
        self.read_record(key, |table, record| {
            let parents = parent_ids(table, record.parent.as_deref())?;
            Ok((record, parents))
        })
    }

    /// Reads the record of `key` in a read transaction, and hands it to
    /// `then` with the table; a missing key is `NotFound`.
    fn read_record<T>(
        &self,
        key: &str,
        then: impl FnOnce(&redb::ReadOnlyTable<&'static str, &'static [u8]>, Record) -> Result<T>,
    ) -> Result<T> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = match txn.open_table(SNAPSHOTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Err(Error::NotFound { key: key.into() });
            }
            Err(e) => return Err(db_error(e)),
        };
        let record = match table.get(key).map_err(db_error)? {
            Some(v) => decode(key, v.value())?,
            None => return Err(Error::NotFound { key: key.into() }),
        };
        then(&table, record)
    }

    /// The id of the committed snapshot `parent` and its ancestors' ids,
    /// checked but not reserved: a caller copies from them before
    /// [`create`](Self::create) checks again.
    pub(crate) fn committed_parent(&self, parent: &str) -> Result<Vec<u64>> {
        let (record, mut ids) = self.get(parent)?;
        if record.kind != Kind::Committed {
            return Err(not_committed(parent));
        }
        ids.insert(0, record.id);
        Ok(ids)
    }

    /// Adds every snapshot of `all` (active snapshots or views) in one
    /// transaction: all or none. Runs `place(index, id)` for each (which moves
    /// its directory into place), then `finish()`, before committing.
    pub(crate) fn create_all(
        &self,
        all: Vec<NewSnapshot<'_>>,
        mut place: impl FnMut(usize, u64) -> Result<()>,
        finish: impl FnOnce() -> Result<()>,
    ) -> Result<Vec<(Record, Vec<u64>)>> {
        for new in &all {
            validate_key(new.key)?;
            validate_labels(new.key, &new.labels)?;
        }
        let txn = self.db.begin_write().map_err(db_error)?;
        let mut created = Vec::with_capacity(all.len());
        {
            // First: it opens the other tables to build the list if need be.
            let mut children = children_table(&txn)?;
            let mut table = txn.open_table(SNAPSHOTS).map_err(db_error)?;
            let mut counters = txn.open_table(COUNTERS).map_err(db_error)?;
            for (index, new) in all.into_iter().enumerate() {
                if lookup(&table, new.key)?.is_some() {
                    return Err(Error::AlreadyExists {
                        key: new.key.into(),
                    });
                }
                let parents = match new.parent {
                    None => Vec::new(),
                    Some(p) => {
                        let Some(rec) = lookup(&table, p)? else {
                            return Err(Error::NotFound { key: p.into() });
                        };
                        if rec.kind != Kind::Committed {
                            return Err(not_committed(p));
                        }
                        parent_ids(&table, Some(p))?
                    }
                };
                let id = counters
                    .get(NEXT_ID)
                    .map_err(db_error)?
                    .map(|v| v.value())
                    .unwrap_or(1);
                counters.insert(NEXT_ID, id + 1).map_err(db_error)?;
                // The list goes on being complete: this snapshot is in it below.
                counters.insert(CHILDREN_LISTED, id + 1).map_err(db_error)?;
                let now = now_ns();
                let record = Record {
                    id,
                    kind: new.kind,
                    parent: new.parent.map(str::to_string),
                    labels: without_empty(new.labels),
                    created_ns: now,
                    updated_ns: now,
                    usage: None,
                };
                table
                    .insert(new.key, encode(&record).as_slice())
                    .map_err(db_error)?;
                if let Some(p) = new.parent {
                    children.insert((p, new.key), ()).map_err(db_error)?;
                }
                place(index, id)?;
                created.push((record, parents));
            }
        }
        finish()?;
        txn.commit().map_err(db_error)?;
        Ok(created)
    }

    /// Turns the active snapshots into committed ones, in order, in one
    /// transaction: all or none. A later one may name an earlier one as its
    /// parent.
    pub(crate) fn commit_all(&self, all: Vec<Commit<'_>>) -> Result<Vec<Record>> {
        for commit in &all {
            validate_key(commit.name)?;
            validate_labels(commit.name, &commit.labels)?;
        }
        let txn = self.db.begin_write().map_err(db_error)?;
        let mut committed = Vec::with_capacity(all.len());
        {
            let mut children = children_table(&txn)?;
            let mut table = txn.open_table(SNAPSHOTS).map_err(db_error)?;
            for commit in all {
                committed.push(commit_in(&mut table, &mut children, commit)?);
            }
        }
        txn.commit().map_err(db_error)?;
        Ok(committed)
    }

    /// Removes `key` if nothing names it as parent; returns its record.
    pub(crate) fn remove(&self, key: &str) -> Result<Record> {
        let txn = self.db.begin_write().map_err(db_error)?;
        let record = {
            let mut children = children_table(&txn)?;
            let mut table = txn.open_table(SNAPSHOTS).map_err(db_error)?;
            let Some(record) = lookup(&table, key)? else {
                return Err(Error::NotFound { key: key.into() });
            };
            if let Some(child) = first_child(&children, key)? {
                return Err(Error::precondition(
                    key,
                    format!("cannot remove: snapshot {child:?} is its child"),
                ));
            }
            table.remove(key).map_err(db_error)?;
            if let Some(p) = &record.parent {
                children.remove((p.as_str(), key)).map_err(db_error)?;
            }
            record
        };
        txn.commit().map_err(db_error)?;
        Ok(record)
    }

    /// Removes, in one transaction, every active snapshot for which
    /// `doomed(record)` holds; returns their keys.
    pub(crate) fn remove_active_where(
        &self,
        doomed: impl Fn(&Record) -> bool,
    ) -> Result<Vec<String>> {
        let txn = self.db.begin_write().map_err(db_error)?;
        // (key, parent) of each doomed snapshot.
        let mut removed: Vec<(String, Option<String>)> = Vec::new();
        {
            let mut children = children_table(&txn)?;
            let mut table = txn.open_table(SNAPSHOTS).map_err(db_error)?;
            for entry in table.iter().map_err(db_error)? {
                let (key, value) = entry.map_err(db_error)?;
                let record = decode(key.value(), value.value())?;
                if record.kind == Kind::Active && doomed(&record) {
                    removed.push((key.value().to_string(), record.parent));
                }
            }
            // An active snapshot is no one's parent; its own parent's list of
            // children names it.
            for (key, parent) in &removed {
                table.remove(key.as_str()).map_err(db_error)?;
                if let Some(parent) = parent {
                    children
                        .remove((parent.as_str(), key.as_str()))
                        .map_err(db_error)?;
                }
            }
        }
        if removed.is_empty() {
            txn.abort().map_err(db_error)?;
        } else {
            txn.commit().map_err(db_error)?;
        }
        Ok(removed.into_iter().map(|(key, _)| key).collect())
    }

    /// Replaces labels (all, or those `fieldpaths` name) of `info.name`.
    pub(crate) fn update(&self, info: &Info, fieldpaths: &[&str]) -> Result<Info> {
        validate_key(&info.name)?;
        validate_labels(&info.name, &info.labels)?;
        let txn = self.db.begin_write().map_err(db_error)?;
        let out = {
            let mut table = txn.open_table(SNAPSHOTS).map_err(db_error)?;
            let Some(mut record) = lookup(&table, &info.name)? else {
                return Err(Error::NotFound {
                    key: info.name.clone(),
                });
            };
            if fieldpaths.is_empty() {
                record.labels = info.labels.clone();
            }
            for path in fieldpaths {
                if *path == "labels" {
                    record.labels = info.labels.clone();
                } else if let Some(key) = path.strip_prefix("labels.") {
                    match info.labels.get(key) {
                        Some(v) => record.labels.insert(key.to_string(), v.clone()),
                        None => record.labels.remove(key),
                    };
                } else {
                    return Err(Error::InvalidArgument(format!(
                        "cannot update field {path:?} of snapshot {:?}",
                        info.name
                    )));
                }
            }
            record.labels = without_empty(std::mem::take(&mut record.labels));
            record.updated_ns = now_ns();
            table
                .insert(info.name.as_str(), encode(&record).as_slice())
                .map_err(db_error)?;
            record.info(&info.name)
        };
        txn.commit().map_err(db_error)?;
        Ok(out)
    }

    /// Every snapshot, with its record.
    pub(crate) fn list(&self) -> Result<Vec<(String, Record)>> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = match txn.open_table(SNAPSHOTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_error(e)),
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_error)? {
            let (key, value) = entry.map_err(db_error)?;
            out.push((key.value().to_string(), decode(key.value(), value.value())?));
        }
        Ok(out)
    }

    /// Calls `sweep` with the id of every snapshot while holding a write
    /// transaction (exclusive across processes), so that no create is
    /// between placing a directory and recording it meanwhile. Nothing is
    /// written: the transaction is aborted.
    pub(crate) fn with_ids_held(
        &self,
        sweep: impl FnOnce(&std::collections::HashSet<u64>) -> Result<()>,
    ) -> Result<()> {
        let txn = self.db.begin_write().map_err(db_error)?;
        let mut ids = std::collections::HashSet::new();
        {
            let table = txn.open_table(SNAPSHOTS).map_err(db_error)?;
            for entry in table.iter().map_err(db_error)? {
                let (key, value) = entry.map_err(db_error)?;
                ids.insert(decode(key.value(), value.value())?.id);
            }
        }
        let swept = sweep(&ids);
        txn.abort().map_err(db_error)?;
        swept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `key` (with `parent`) and moves `next_id` on, as a version
    /// that keeps no list of children does.
    fn write_as_before(db: &SharedDatabase, key: &str, id: u64, kind: Kind, parent: Option<&str>) {
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(SNAPSHOTS).unwrap();
            let record = Record {
                id,
                kind,
                parent: parent.map(str::to_string),
                labels: Labels::new(),
                created_ns: 0,
                updated_ns: 0,
                usage: None,
            };
            table.insert(key, encode(&record).as_slice()).unwrap();
            let mut counters = txn.open_table(COUNTERS).unwrap();
            counters.insert(NEXT_ID, id + 1).unwrap();
        }
        txn.commit().unwrap();
    }

    /// A database written before snapshots' children were listed, or
    /// written since by such a version, gets the list built again before a
    /// removal relies on it: a parent with a child still cannot go.
    #[test]
    fn children_written_by_a_version_without_the_list_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.db");
        {
            let db = ocidist_images::store::open_shared_database(&path).unwrap();
            write_as_before(&db, "base", 1, Kind::Committed, None);
            write_as_before(&db, "child", 2, Kind::Active, Some("base"));
        }
        let store = MetaStore::open(&path).unwrap();
        let refused = |key| match store.remove(key) {
            Err(Error::FailedPrecondition { reason, .. }) => reason,
            other => panic!("{key}: {other:?}"),
        };
        assert!(refused("base").contains("\"child\""));
        store.remove("child").unwrap();
        // The list is complete now; an older version adds a child again.
        write_as_before(&store.db, "late", 3, Kind::Active, Some("base"));
        assert!(refused("base").contains("\"late\""));
        store.remove("late").unwrap();
        store.remove("base").unwrap();
        assert!(store.list().unwrap().is_empty());
    }

    /// The list follows a commit's new name, and a removal.
    #[test]
    fn children_follow_commits_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("metadata.db")).unwrap();
        let new = |key, parent| NewSnapshot {
            key,
            parent,
            kind: Kind::Active,
            labels: Labels::new(),
        };
        let commit = |name, key| Commit {
            name,
            key,
            labels: Labels::new(),
            parent: None,
            usage: (0, 0),
        };
        let create = |snapshot| store.create_all(vec![snapshot], |_, _| Ok(()), || Ok(()));
        create(new("a-active", None)).unwrap();
        store.commit_all(vec![commit("a", "a-active")]).unwrap();
        create(new("b-active", Some("a"))).unwrap();
        store.commit_all(vec![commit("b", "b-active")]).unwrap();
        create(new("c", Some("b"))).unwrap();
        let child_of = |key| match store.remove(key) {
            Err(Error::FailedPrecondition { reason, .. }) => reason,
            other => panic!("{key}: {other:?}"),
        };
        assert!(child_of("a").contains("\"b\""));
        assert!(child_of("b").contains("\"c\""));
        store.remove("c").unwrap();
        store.remove("b").unwrap();
        store.remove("a").unwrap();
        // Siblings whose names extend the parent's are not its children.
        create(new("p-active", None)).unwrap();
        store.commit_all(vec![commit("p", "p-active")]).unwrap();
        create(new("p2", None)).unwrap();
        create(new("q", Some("p"))).unwrap();
        assert!(child_of("p").contains("\"q\""));
        store.remove("p2").unwrap();
        store.remove("q").unwrap();
        store.remove("p").unwrap();
    }
}
