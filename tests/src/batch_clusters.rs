//! The inputs of `customer_clusters` as a batch computation, straight from the contract:
//! per user, six traits from the events, their log1p features and the standardized
//! features. Shares no code with the job (plain maps and `f64` arithmetic).
//!
//! The k-means itself is not recomputed here: k-means has no single right answer. The
//! end-to-end test checks instead that every user's row is consistent with these features
//! and the printed centroids, and compares the job's SSE with scikit-learn's on them.

use std::collections::{BTreeMap, BTreeSet};

use crate::BatchEvent;

/// Feature names, in the job's order.
pub const FEATURES: [&str; 6] = [
    "views",
    "carts",
    "purchases",
    "revenue",
    "distinct_products",
    "sessions",
];

/// Per user: views, carts, purchases (event counts), revenue (cents of purchases with a
/// price > 0), distinct products (any event), distinct non-null sessions.
pub fn batch_cluster_traits(events: &[BatchEvent]) -> BTreeMap<u64, [u64; 6]> {
    let mut traits: BTreeMap<u64, [u64; 6]> = BTreeMap::new();
    let mut products: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let mut sessions: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
    for e in events {
        let t = traits.entry(e.user_id).or_default();
        match e.event_type.as_str() {
            "view" => t[0] += 1,
            "cart" => t[1] += 1,
            "purchase" => {
                t[2] += 1;
                if e.price_cents > 0 {
                    t[3] += e.price_cents as u64;
                }
            }
            _ => {}
        }
        products.entry(e.user_id).or_default().insert(e.product_id);
        if let Some(s) = &e.session {
            sessions.entry(e.user_id).or_default().insert(s.as_str());
        }
    }
    for (user, t) in traits.iter_mut() {
        t[4] = products.get(user).map(|s| s.len() as u64).unwrap_or(0);
        t[5] = sessions.get(user).map(|s| s.len() as u64).unwrap_or(0);
    }
    traits
}

/// `log1p` of each trait, revenue in currency units (cents / 100).
pub fn log1p_features(t: &[u64; 6]) -> [f64; 6] {
    let mut f = [0.0; 6];
    for j in 0..6 {
        let x = if j == 3 {
            t[j] as f64 / 100.0
        } else {
            t[j] as f64
        };
        f[j] = x.ln_1p();
    }
    f
}

/// Standardized features: `(log1p - mean) / std` with the population mean and standard
/// deviation over all users (a zero deviation counts as 1).
pub fn standardized_features(traits: &BTreeMap<u64, [u64; 6]>) -> BTreeMap<u64, [f64; 6]> {
    let raw: BTreeMap<u64, [f64; 6]> = traits
        .iter()
        .map(|(u, t)| (*u, log1p_features(t)))
        .collect();
    let n = raw.len().max(1) as f64;
    let mut mean = [0.0; 6];
    for f in raw.values() {
        for j in 0..6 {
            mean[j] += f[j] / n;
        }
    }
    let mut std = [0.0; 6];
    for f in raw.values() {
        for j in 0..6 {
            std[j] += (f[j] - mean[j]).powi(2) / n;
        }
    }
    for s in &mut std {
        *s = s.sqrt();
        if *s < 1e-12 {
            *s = 1.0;
        }
    }
    raw.into_iter()
        .map(|(u, f)| {
            let mut z = [0.0; 6];
            for j in 0..6 {
                z[j] = (f[j] - mean[j]) / std[j];
            }
            (u, z)
        })
        .collect()
}

/// Writes `user_id,<features...>` rows as CSV (for the scikit-learn comparison).
pub fn write_features_csv(
    path: &std::path::Path,
    features: &BTreeMap<u64, [f64; 6]>,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "user_id,{}", FEATURES.join(","))?;
    for (u, z) in features {
        let cols: Vec<String> = z.iter().map(|x| format!("{x:.17e}")).collect();
        writeln!(out, "{u},{}", cols.join(","))?;
    }
    out.flush()
}
