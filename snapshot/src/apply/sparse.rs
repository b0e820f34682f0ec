//! PAX sparse files, GNU's formats 0.0, 0.1 and 1.0 (`tar --sparse
//! --format=posix`): a file's data regions packed one after another in the
//! entry's data, with PAX records for where each goes, the file's real size
//! and, in 0.1 and 1.0, its real name (the header's is
//! `GNUSparseFile.<pid>/<name>`). In 1.0 the map starts the data. They are
//! read as Go's `archive/tar` (containerd's) reads them, so that one diff
//! ID makes one tree: the same versions are sparse, an unknown version is a
//! plain file, and a map that does not fit is refused.

use std::io::{self, Read};

/// The longest 1.0 map read from an entry's data: Go's limit (1 MiB), which
/// GNU tar reaches at about 70,000 data regions.
const MAX_MAP_BYTES: u64 = 1 << 20;

/// The most regions a map may hold, as in Go (a 0.x map travels in PAX
/// records, which may be longer here than Go allows).
const MAX_REGIONS: u64 = 1 << 20;

/// `length` bytes of data at `offset` in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Region {
    pub(super) offset: u64,
    pub(super) length: u64,
}

/// What an entry's PAX records say of a sparse file.
#[derive(Debug)]
pub(super) struct PaxSparse {
    /// The file's name (`GNU.sparse.name`), in place of the header's.
    pub(super) name: Option<Vec<u8>>,
    /// The real size (`GNU.sparse.size`, or 1.0's `GNU.sparse.realsize`);
    /// without one, the entry's size stands, as Go reads it.
    size: Option<u64>,
    /// The map of 0.0 and 0.1; `None` for 1.0, whose map starts the data.
    map: Option<Vec<Region>>,
}

/// Where a sparse file's data goes: its regions, in order, and its size.
#[derive(Debug)]
pub(super) struct Layout {
    pub(super) regions: Vec<Region>,
    pub(super) size: u64,
    /// Where in the entry's data the regions' data starts: after 1.0's map.
    pub(super) data_start: u64,
}

/// The number a record or map line holds: decimal, an optional sign, as Go's
/// `strconv.ParseInt` reads it; never negative.
fn number(what: &str, text: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse::<i64>().ok())
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| format!("{what} {:?} is no size", String::from_utf8_lossy(text)))
}

/// `tokens` as regions: an offset and a length each.
fn regions<'a>(mut tokens: impl ExactSizeIterator<Item = &'a [u8]>) -> Result<Vec<Region>, String> {
    let mut regions = Vec::with_capacity(tokens.len() / 2);
    while let Some(offset) = tokens.next() {
        let length = tokens.next().ok_or("the map's last region has no length")?;
        regions.push(Region {
            offset: number("the map's offset", offset)?,
            length: number("the map's length", length)?,
        });
    }
    Ok(regions)
}

/// 0.0's map: `GNU.sparse.offset` and `GNU.sparse.numbytes` records, one
/// pair a region, checked as Go's PAX parser checks them in every header
/// it reads: an offset first, then a length, and no commas (Go joins them
/// into one comma-separated map).
#[derive(Default)]
struct Pairs<'a>(Vec<&'a [u8]>);

impl<'a> Pairs<'a> {
    /// Takes the record `key` = `value` if it is one of the pairs'.
    fn push(&mut self, key: &str, value: &'a [u8]) -> Result<(), String> {
        if !matches!(key, "GNU.sparse.offset" | "GNU.sparse.numbytes") {
            return Ok(());
        }
        let expected = if self.0.len().is_multiple_of(2) {
            "GNU.sparse.offset"
        } else {
            "GNU.sparse.numbytes"
        };
        if key != expected {
            return Err(format!("{key} where {expected} was due"));
        }
        if value.contains(&b',') {
            let value = String::from_utf8_lossy(value);
            return Err(format!("{key} {value:?} holds a comma"));
        }
        self.0.push(value);
        Ok(())
    }
}

/// Checks the 0.0 pairs among `records` of an entry whose map is not read
/// from them (a GNU sparse header carries its own): Go refuses pairs out of
/// order whatever the header is for.
pub(super) fn check_pairs<'a>(
    records: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<(), String> {
    let mut pairs = Pairs::default();
    records
        .into_iter()
        .try_for_each(|(key, value)| pairs.push(key, value))
}

impl PaxSparse {
    /// What `records` (an entry's PAX records, in order) say of a sparse
    /// file: `None` when it is not one. Versions 0.0, 0.1 and 1.0 are
    /// sparse, and so is a map with no version (0.0 and 0.1 wrote none);
    /// any other version is left a plain file, as Go leaves it.
    pub(super) fn from_records<'a>(
        records: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Option<PaxSparse>, String> {
        let (mut major, mut minor, mut name, mut size, mut real_size) =
            (None, None, None, None, None);
        let (mut blocks, mut map) = (None, None);
        let mut pairs = Pairs::default();
        for (key, value) in records {
            // The last record of a key counts, and an empty one is none, as
            // Go reads them.
            let given = Some(value).filter(|v| !v.is_empty());
            match key {
                "GNU.sparse.major" => major = given,
                "GNU.sparse.minor" => minor = given,
                "GNU.sparse.name" => name = given,
                "GNU.sparse.size" => size = given,
                "GNU.sparse.realsize" => real_size = given,
                "GNU.sparse.numblocks" => blocks = Some(value),
                "GNU.sparse.map" => map = given,
                _ => pairs.push(key, value)?,
            }
        }
        let tokens: Vec<&[u8]> = match (pairs.0.is_empty(), map) {
            (false, _) => pairs.0,
            (true, Some(map)) => map.split(|b| *b == b',').collect(),
            (true, None) => Vec::new(),
        };
        let version_1 = match (major, minor) {
            (Some(b"0"), Some(b"0" | b"1")) => false,
            (Some(b"1"), Some(b"0")) => true,
            (Some(_), _) | (_, Some(_)) => return Ok(None),
            (None, None) if !tokens.is_empty() => false,
            (None, None) => return Ok(None),
        };
        let size = match size.or(real_size) {
            Some(text) => Some(number("its real size", text)?),
            None => None,
        };
        let map = if version_1 {
            None
        } else {
            let blocks = blocks.ok_or("its map has no GNU.sparse.numblocks")?;
            let blocks = number("GNU.sparse.numblocks", blocks)?;
            if blocks > MAX_REGIONS {
                return Err(format!("its map of {blocks} regions is over {MAX_REGIONS}"));
            }
            if blocks * 2 != tokens.len() as u64 {
                return Err(format!(
                    "a map of {blocks} regions holds {} numbers",
                    tokens.len()
                ));
            }
            Some(regions(tokens.into_iter())?)
        };
        Ok(Some(PaxSparse {
            name: name.map(<[u8]>::to_vec),
            size,
            map,
        }))
    }

    /// The file's layout, its map read from the start of `data` (the
    /// entry's, `data_size` bytes) for 1.0, and checked as Go checks it:
    /// regions in order, not overlapping, within the real size; and, when
    /// the data is `written` (Go finds out only as it reads it), their
    /// lengths adding up to the data that is left, no more and no less.
    pub(super) fn layout(
        self,
        data: &mut impl Read,
        data_size: u64,
        written: bool,
    ) -> Result<Layout, String> {
        let (regions, data_start) = match self.map {
            Some(regions) => (regions, 0),
            None => read_map(data)?,
        };
        let packed = data_size.saturating_sub(data_start);
        let size = self.size.unwrap_or(data_size);
        let mut end = 0u64;
        let mut held = 0u64;
        for region in &regions {
            let region_end = region
                .offset
                .checked_add(region.length)
                .filter(|end| i64::try_from(*end).is_ok())
                .ok_or_else(|| {
                    format!(
                        "its region of {} bytes at {} ends past any file",
                        region.length, region.offset
                    )
                })?;
            if region_end > size {
                return Err(format!(
                    "its region of {} bytes at {} ends past its size, {size} bytes",
                    region.length, region.offset
                ));
            }
            if region.offset < end {
                return Err(format!(
                    "its region at {} starts before the one before it ends, at {end}",
                    region.offset
                ));
            }
            end = region_end;
            held += region.length;
        }
        if written && held != packed {
            return Err(format!(
                "its map places {held} bytes, its data holds {packed}"
            ));
        }
        Ok(Layout {
            regions,
            size,
            data_start,
        })
    }
}

/// Reads 1.0's map from the start of `data`: the number of regions, then an
/// offset and a length for each, one decimal number a line, in whole
/// 512-byte blocks. The regions, and the bytes the map took.
fn read_map(data: &mut impl Read) -> Result<(Vec<Region>, u64), String> {
    let mut text = Vec::new();
    let mut lines = 0u64;
    // Reads blocks until `needed` lines have ended.
    let mut read_lines = |text: &mut Vec<u8>, needed: u64| -> Result<(), String> {
        let mut block = [0u8; 512];
        while lines < needed {
            if text.len() as u64 >= MAX_MAP_BYTES {
                return Err(format!("its map is over {} MiB", MAX_MAP_BYTES >> 20));
            }
            data.read_exact(&mut block).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => "its data ends inside its map".to_string(),
                _ => format!("read: {}", ocidist_content::Report::new(&e)),
            })?;
            lines += block.iter().filter(|b| **b == b'\n').count() as u64;
            text.extend_from_slice(&block);
        }
        Ok(())
    };
    read_lines(&mut text, 1)?;
    let count_end = text.iter().position(|b| *b == b'\n').unwrap_or(text.len());
    let count = number("its map's count", &text[..count_end])?;
    if count > MAX_REGIONS {
        return Err(format!("its map of {count} regions is over {MAX_REGIONS}"));
    }
    // The count line, then two lines a region.
    read_lines(&mut text, 2 * count + 1)?;
    let map_bytes = text.len() as u64;
    let tokens: Vec<&[u8]> = text
        .split(|b| *b == b'\n')
        .skip(1)
        .take(2 * count as usize)
        .collect();
    Ok((regions(tokens.into_iter())?, map_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<(&'a str, &'a [u8])> {
        pairs.iter().map(|(k, v)| (*k, v.as_bytes())).collect()
    }

    fn region(offset: u64, length: u64) -> Region {
        Region { offset, length }
    }

    #[test]
    fn versions_decide_what_is_sparse() {
        let of = |pairs: &[(&str, &str)]| PaxSparse::from_records(records(pairs));
        // 0.0: pairs of records, no version.
        let old = of(&[
            ("GNU.sparse.size", "100"),
            ("GNU.sparse.numblocks", "2"),
            ("GNU.sparse.offset", "10"),
            ("GNU.sparse.numbytes", "5"),
            ("GNU.sparse.offset", "90"),
            ("GNU.sparse.numbytes", "10"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(old.map, Some(vec![region(10, 5), region(90, 10)]));
        assert_eq!((old.size, old.name), (Some(100), None));
        // 0.1: one map record.
        let map = of(&[
            ("GNU.sparse.numblocks", "1"),
            ("GNU.sparse.map", "0,3"),
            ("GNU.sparse.name", "real"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(map.map, Some(vec![region(0, 3)]));
        assert_eq!(map.name.as_deref(), Some(&b"real"[..]));
        // 1.0: the map is in the data.
        let new = of(&[("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0")])
            .unwrap()
            .unwrap();
        assert!(new.map.is_none());
        // Unknown versions, a lone version number, no map: plain files.
        for plain in [
            &[("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0")][..],
            &[("GNU.sparse.major", "0"), ("GNU.sparse.map", "0,3")][..],
            &[("GNU.sparse.name", "x"), ("GNU.sparse.size", "9")][..],
            &[("GNU.sparse.map", "")][..],
            &[("GNU.sparse.map", "0,1"), ("GNU.sparse.map", "")][..],
        ] {
            assert!(of(plain).unwrap().is_none(), "{plain:?}");
        }
        // Empty records are none, as in Go: the version, the name, the size.
        let empty = of(&[
            ("GNU.sparse.major", ""),
            ("GNU.sparse.minor", ""),
            ("GNU.sparse.name", "real"),
            ("GNU.sparse.name", ""),
            ("GNU.sparse.size", ""),
            ("GNU.sparse.numblocks", "1"),
            ("GNU.sparse.map", "0,3"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((empty.name, empty.size), (None, None));
        assert_eq!(empty.map, Some(vec![region(0, 3)]));
    }

    #[test]
    fn maps_that_do_not_parse_are_refused() {
        let of = |pairs: &[(&str, &str)]| PaxSparse::from_records(records(pairs));
        for bad in [
            // A length before its offset, and a comma in 0.0's value.
            &[("GNU.sparse.numbytes", "1")][..],
            &[("GNU.sparse.offset", "1,2")][..],
            // Counts that do not match, numbers that are not sizes.
            &[("GNU.sparse.numblocks", "2"), ("GNU.sparse.map", "0,1")][..],
            &[("GNU.sparse.numblocks", "1"), ("GNU.sparse.map", "0,1,2")][..],
            &[("GNU.sparse.map", "0,1")][..],
            &[("GNU.sparse.numblocks", "1"), ("GNU.sparse.map", "0,-1")][..],
            &[("GNU.sparse.numblocks", "1"), ("GNU.sparse.map", "0, 1")][..],
            &[("GNU.sparse.numblocks", "-1"), ("GNU.sparse.map", "0,1")][..],
            &[
                ("GNU.sparse.major", "1"),
                ("GNU.sparse.minor", "0"),
                ("GNU.sparse.realsize", "x"),
            ][..],
        ] {
            assert!(of(bad).is_err(), "{bad:?}");
        }
    }

    fn sparse(map: Vec<Region>, size: u64) -> PaxSparse {
        PaxSparse {
            name: None,
            size: Some(size),
            map: Some(map),
        }
    }

    #[test]
    fn regions_are_in_order_within_the_size_and_hold_the_data() {
        let layout =
            |map, size, data, written| sparse(map, size).layout(&mut io::empty(), data, written);
        let ok = layout(vec![region(0, 2), region(2, 3), region(9, 1)], 10, 6, true).unwrap();
        assert_eq!((ok.regions.len(), ok.size), (3, 10));
        for (map, data) in [
            (vec![region(5, 2), region(6, 1)], 3), // overlapping
            (vec![region(5, 1), region(0, 1)], 2), // out of order
            (vec![region(9, 2)], 2),               // past the size
            (vec![region(u64::MAX, 1)], 1),        // past any file
        ] {
            for written in [true, false] {
                let refused = layout(map.clone(), 10, data, written);
                assert!(refused.is_err(), "{map:?} {data}");
            }
        }
        // Data that does not add up is found only where it is written.
        for (map, data) in [
            (vec![region(0, 2)], 3), // data left over
            (vec![region(0, 2)], 1), // data missing
        ] {
            assert!(
                layout(map.clone(), 10, data, true).is_err(),
                "{map:?} {data}"
            );
            assert!(
                layout(map.clone(), 10, data, false).is_ok(),
                "{map:?} {data}"
            );
        }
    }

    #[test]
    fn pairs_out_of_order_are_refused_whatever_the_header_is_for() {
        let check = |pairs: &[(&str, &str)]| check_pairs(records(pairs));
        check(&[("GNU.sparse.offset", "1"), ("GNU.sparse.numbytes", "2")]).unwrap();
        check(&[("GNU.sparse.size", "1"), ("comment", "x")]).unwrap();
        let err = check(&[("GNU.sparse.numbytes", "1")]).unwrap_err();
        assert!(err.contains("where GNU.sparse.offset was due"), "{err}");
        let err = check(&[("GNU.sparse.offset", "1,2")]).unwrap_err();
        assert!(err.contains("holds a comma"), "{err}");
    }

    /// 1.0's map, padded to whole blocks, as GNU tar writes it.
    fn map_blocks(text: &str) -> Vec<u8> {
        let mut data = text.as_bytes().to_vec();
        data.resize(text.len().next_multiple_of(512), 0);
        data
    }

    #[test]
    fn version_1_maps_are_read_from_whole_blocks() {
        let mut data = map_blocks("2\n0\n3\n100\n2\n");
        data.extend_from_slice(b"abcde");
        let (regions, bytes) = read_map(&mut &data[..]).unwrap();
        assert_eq!(regions, vec![region(0, 3), region(100, 2)]);
        assert_eq!(bytes, 512);
        // A map that runs into a second block.
        // A map over three blocks (1,204 bytes), and packed data after it.
        let mut long = map_blocks(&format!("300\n{}", "1\n".repeat(600)));
        long.extend_from_slice(b"\n\n\n");
        let (regions, bytes) = read_map(&mut &long[..]).unwrap();
        assert_eq!((regions.len(), bytes), (300, 1536));
        // A count the data cannot hold ends with the data, or the limit.
        let err = read_map(&mut &map_blocks("1000\n0\n1\n")[..]).unwrap_err();
        assert!(err.contains("ends inside its map"), "{err}");
        let mut huge = b"1000000000\n".to_vec();
        huge.extend(std::iter::repeat_n(b"1\n".repeat(256), 1 << 14).flatten());
        let err = read_map(&mut &huge[..]).unwrap_err();
        assert!(err.contains("regions is over 1048576"), "{err}");
        let mut long = b"600000\n".to_vec();
        long.extend(std::iter::repeat_n(b"1\n".repeat(256), 1 << 12).flatten());
        let err = read_map(&mut &long[..]).unwrap_err();
        assert!(err.contains("over 1 MiB"), "{err}");
    }
}
