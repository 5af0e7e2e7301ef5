//! Whether the host's split-lock handling can punish with the
//! interruptible sleep (the "misery" mode), from the kernel release and
//! `kernel.split_lock_mitigate`: the one place this rule lives. The
//! classifier, the doctor and the live watch of the sysctl all read it.

/// The first release whose split-lock handling punishes with the
/// interruptible sleep and semaphore (the misery mode, b041b525dab9;
/// kernel.md §1.1).
pub const MISERY_SINCE: (u32, u32) = (5, 19);
/// The first release with split-lock detection at all (kernel.md §1.1).
pub const DETECTION_SINCE: (u32, u32) = (5, 7);

/// Whether split-lock handling can punish with an interruptible sleep,
/// from `kernel.split_lock_mitigate` and the kernel release: the sysctl
/// decides where it exists; otherwise 5.19 and later always punish (the
/// misery mode, kernel.md §1.1) and older kernels never do. `None` when
/// neither is known.
pub fn misery_possible(split_lock_mitigate: Option<u32>, release: Option<&str>) -> Option<bool> {
    if let Some(value) = split_lock_mitigate {
        return Some(value != 0);
    }
    let (major, minor) = parse_release(release?)?;
    Some((major, minor) >= MISERY_SINCE)
}

/// `(major, minor)` of a release string like `6.8.12-4-pve`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases() {
        assert_eq!(parse_release("6.8.12-4-pve"), Some((6, 8)));
        assert_eq!(parse_release("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn the_sysctl_decides_where_it_exists() {
        assert_eq!(misery_possible(Some(0), Some("6.12.0")), Some(false));
        assert_eq!(misery_possible(Some(1), Some("5.4.0")), Some(true));
        assert_eq!(misery_possible(None, Some("6.1.0-57-amd64")), Some(true));
        assert_eq!(
            misery_possible(None, Some("5.15.0-91-generic")),
            Some(false)
        );
        assert_eq!(misery_possible(None, None), None);
    }
}
