//! Plans for splitting rows into work: fixed-size chunks, or an even split
//! into a number of parts.

use std::num::NonZeroUsize;
use std::ops::Range;

/// Consecutive ranges of at most `chunk_rows` rows covering `0..rows`; only
/// the last may be shorter. Yields nothing when `rows` is 0.
///
/// ```
/// use std::num::NonZeroUsize;
/// use procpool_shm::chunks::row_chunks;
/// let chunks: Vec<_> = row_chunks(10, NonZeroUsize::new(4).unwrap()).collect();
/// assert_eq!(chunks, [0..4, 4..8, 8..10]);
/// ```
pub fn row_chunks(
    rows: usize,
    chunk_rows: NonZeroUsize,
) -> impl ExactSizeIterator<Item = Range<usize>> + Clone {
    let chunk_rows = chunk_rows.get();
    (0..rows)
        .step_by(chunk_rows)
        .map(move |start| start..rows.min(start.saturating_add(chunk_rows)))
}

/// Splits `0..rows` into `parts` consecutive ranges whose lengths differ by at
/// most one, longer ones first (as `numpy.array_split` does).
///
/// No range is empty: with fewer rows than parts there is one range per row,
/// and with no rows the result is empty.
///
/// ```
/// use std::num::NonZeroUsize;
/// use procpool_shm::chunks::even_split;
/// assert_eq!(even_split(10, NonZeroUsize::new(3).unwrap()), [0..4, 4..7, 7..10]);
/// assert_eq!(even_split(2, NonZeroUsize::new(4).unwrap()), [0..1, 1..2]);
/// ```
pub fn even_split(rows: usize, parts: NonZeroUsize) -> Vec<Range<usize>> {
    let parts = parts.get().min(rows);
    if parts == 0 {
        return Vec::new();
    }
    let (base, longer) = (rows / parts, rows % parts);
    let mut start = 0;
    (0..parts)
        .map(|part| {
            let len = base + usize::from(part < longer);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonzero(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    /// Checks that `ranges` are non-empty and tile `0..rows` in order.
    fn assert_tiles(ranges: &[Range<usize>], rows: usize) {
        let mut next = 0;
        for range in ranges {
            assert_eq!(range.start, next, "{ranges:?}");
            assert!(range.end > range.start, "{ranges:?}");
            next = range.end;
        }
        assert_eq!(next, rows, "{ranges:?}");
    }

    #[test]
    fn row_chunks_tile_the_rows() {
        for rows in [0, 1, 5, 8, 9, 100] {
            for chunk in [1, 3, 8, 1000] {
                let chunks: Vec<_> = row_chunks(rows, nonzero(chunk)).collect();
                assert_tiles(&chunks, rows);
                assert!(chunks.iter().all(|range| range.len() <= chunk));
                assert_eq!(chunks.len(), rows.div_ceil(chunk));
                assert_eq!(row_chunks(rows, nonzero(chunk)).len(), chunks.len());
            }
        }
        let last = row_chunks(usize::MAX, nonzero(usize::MAX / 2 + 1)).last();
        assert_eq!(last, Some(usize::MAX / 2 + 1..usize::MAX));
    }

    #[test]
    fn even_split_balances_and_never_yields_empty_ranges() {
        for rows in [0, 1, 2, 7, 10, 1001] {
            for parts in [1, 2, 3, 4, 16] {
                let ranges = even_split(rows, nonzero(parts));
                assert_tiles(&ranges, rows);
                assert_eq!(ranges.len(), parts.min(rows));
                let lens: Vec<usize> = ranges.iter().map(|range| range.len()).collect();
                assert!(lens
                    .windows(2)
                    .all(|pair| pair[0] >= pair[1] && pair[0] - pair[1] <= 1));
            }
        }
        assert_eq!(even_split(0, nonzero(3)), Vec::<Range<usize>>::new());
    }
}
