//! Kubernetes resource quantities (`500m`, `2`, `1.5Gi`, `1e3`), kept as integer
//! thousandths of the base unit, with the format (binary or decimal) for printing.

/// A parsed quantity: `millis` thousandths of the unit; `binary` when written with a
/// binary suffix (Ki, Mi, ...), which is how it prints back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Quantity {
    pub millis: i128,
    pub binary: bool,
}

impl Quantity {
    /// A whole-unit quantity (printed in decimal).
    pub fn units(n: i128) -> Self {
        Quantity {
            millis: n * 1000,
            binary: false,
        }
    }

    /// Parses a quantity string; None if it is not one.
    pub fn parse(s: &str) -> Option<Quantity> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        let (neg, body) = match s.as_bytes()[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let num_end = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let (num, suffix) = body.split_at(num_end);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return None;
        }
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        // value = digits / 10^frac_len, scaled by the suffix; computed in 10^-9 units
        let digits: String = format!("{int_part}{frac_part}");
        let digits: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().ok()?
        };
        let frac_len = frac_part.len() as u32;
        let (mul_num, exp10, binary): (i128, i32, bool) = match suffix {
            "" => (1, 0, false),
            "n" => (1, -9, false),
            "u" => (1, -6, false),
            "m" => (1, -3, false),
            "k" => (1, 3, false),
            "M" => (1, 6, false),
            "G" => (1, 9, false),
            "T" => (1, 12, false),
            "P" => (1, 15, false),
            "E" => (1, 18, false),
            "Ki" => (1 << 10, 0, true),
            "Mi" => (1 << 20, 0, true),
            "Gi" => (1 << 30, 0, true),
            "Ti" => (1 << 40, 0, true),
            "Pi" => (1 << 50, 0, true),
            "Ei" => (1 << 60, 0, true),
            e if e.starts_with(['e', 'E']) => (1, e[1..].parse::<i32>().ok()?, false),
            _ => return None,
        };
        // millis = digits * mul_num * 10^(exp10 + 3 - frac_len), rounded up like k8s
        let exp = exp10 + 3 - frac_len as i32;
        let base = digits.checked_mul(mul_num)?;
        let millis = if exp >= 0 {
            base.checked_mul(10i128.checked_pow(exp as u32)?)?
        } else {
            let div = 10i128.checked_pow((-exp) as u32)?;
            (base + div - 1) / div
        };
        Some(Quantity {
            millis: if neg { -millis } else { millis },
            binary,
        })
    }

    /// The sum, keeping the left format (the right one when the left is zero).
    pub fn add(self, o: Quantity) -> Quantity {
        Quantity {
            millis: self.millis + o.millis,
            binary: if self.millis == 0 {
                o.binary
            } else {
                self.binary
            },
        }
    }
}

impl std::fmt::Display for Quantity {
    /// Canonical form as the API server prints it (`500m`, `2`, `1k`, `3Gi`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.millis;
        if m == 0 {
            return f.write_str("0");
        }
        if m % 1000 != 0 {
            return write!(f, "{m}m");
        }
        let v = m / 1000;
        if self.binary {
            for (suffix, shift) in [
                ("Ei", 60),
                ("Pi", 50),
                ("Ti", 40),
                ("Gi", 30),
                ("Mi", 20),
                ("Ki", 10),
            ] {
                let unit = 1i128 << shift;
                if v % unit == 0 {
                    return write!(f, "{}{suffix}", v / unit);
                }
            }
        }
        for (suffix, exp) in [
            ("E", 18),
            ("P", 15),
            ("T", 12),
            ("G", 9),
            ("M", 6),
            ("k", 3),
        ] {
            let unit = 10i128.pow(exp);
            if v % unit == 0 {
                return write!(f, "{}{suffix}", v / unit);
            }
        }
        write!(f, "{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::Quantity;

    fn m(s: &str) -> i128 {
        Quantity::parse(s).unwrap().millis
    }

    #[test]
    fn parses() {
        assert_eq!(m("500m"), 500);
        assert_eq!(m("2"), 2000);
        assert_eq!(m("0.5"), 500);
        assert_eq!(m("1.5Gi"), 1536 * 1024 * 1024 * 1000);
        assert_eq!(m("1Ki"), 1_024_000);
        assert_eq!(m("1k"), 1_000_000);
        assert_eq!(m("128M"), 128_000_000_000);
        assert_eq!(m("1e3"), 1_000_000);
        assert_eq!(m("1T"), 1_000_000_000_000_000);
        assert_eq!(m("100n"), 1);
        assert!(Quantity::parse("abc").is_none());
        assert!(Quantity::parse("1.2.3").is_none());
        assert!(Quantity::parse("5x").is_none());
        assert!(Quantity::parse("").is_none());
    }

    #[test]
    fn prints() {
        let p = |s: &str| Quantity::parse(s).unwrap().to_string();
        assert_eq!(p("500m"), "500m");
        assert_eq!(p("2"), "2");
        assert_eq!(p("2000m"), "2");
        assert_eq!(p("1024Mi"), "1Gi");
        assert_eq!(p("1000"), "1k");
        assert_eq!(p("1536Mi"), "1536Mi");
        assert_eq!(
            Quantity::parse("1Gi")
                .unwrap()
                .add(Quantity::parse("1Gi").unwrap())
                .to_string(),
            "2Gi"
        );
    }
}
