//! The product catalog: categories, brands and products with their popularity and price.
//!
//! Popularity is Zipf (weight ∝ 1/(rank+1)) at every level: top-level categories,
//! categories within a top level, products within a category, brands. The catalog knows
//! each product's expected share of rows (its *row weight*), and uses it to calibrate the
//! row-level statistics exactly rather than per product:
//!
//! - prices: products are ordered by a latent price score (a per-category level plus
//!   noise, so a category has a price range) and priced at the row-weighted quantile of
//!   their position, so the price distribution over *rows* follows the profile;
//! - code-less categories, brand-less products and zero-price products are chosen by
//!   error diffusion (over decreasing popularity for categories, a hashed order for
//!   products) so that their row share tracks its target.
//!
//! Everything is derived from the seed alone (never from the partition count).

use std::collections::HashSet;

use compact_str::CompactString;

use super::profile;
use super::rng::{hash, mix64, push_thresholds, sample_thresholds, tag, Cdf, Prob, Rng};

/// No brand.
pub(crate) const NO_BRAND: u32 = u32::MAX;

/// One category.
#[derive(Clone, Debug)]
pub(crate) struct Category {
    /// REES46-style 19-digit id.
    pub id: u64,
    /// Dotted code (a static string), or none.
    pub code: Option<CompactString>,
    /// Index into the top levels of the taxonomy.
    pub top: u16,
    /// Expected share of rows.
    pub weight: f64,
    /// First product (index into `Catalog::products`), products are laid out by category
    /// in popularity order.
    pub first_product: u32,
    /// Number of products.
    pub products: u32,
}

/// One product.
#[derive(Clone, Debug)]
pub(crate) struct Product {
    /// Product id.
    pub id: u64,
    /// Index into `Catalog::categories`.
    pub category: u32,
    /// Index into `Catalog::brands`, or [`NO_BRAND`].
    pub brand: u32,
    /// Price in cents (0 for the few broken prices).
    pub price_cents: i64,
}

/// Categories, brands and products.
#[derive(Debug)]
pub(crate) struct Catalog {
    pub categories: Vec<Category>,
    pub products: Vec<Product>,
    pub brands: Vec<CompactString>,
    /// Expected row share per product (sums to 1); read by the tests.
    #[cfg_attr(not(test), allow(dead_code))]
    pub product_weight: Vec<f64>,
    /// Global category distribution (by row weight).
    category_cdf: Cdf,
    /// Per-category product CDFs, flattened in product order.
    product_thresholds: Vec<u32>,
}

/// Splits `total` into parts proportional to `weights`, each at least `min` (largest
/// remainder). Needs `total >= min * weights.len()`.
pub(crate) fn apportion(total: u64, weights: &[f64], min: u64) -> Vec<u64> {
    let n = weights.len() as u64;
    let rest = total - min * n;
    let sum: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| rest as f64 * w / sum).collect();
    let mut parts: Vec<u64> = exact.iter().map(|e| *e as u64).collect();
    let mut left = rest - parts.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    // Largest fractional part first; ties by index (total order: deterministic).
    order.sort_by(|&a, &b| {
        let fa = exact[a] - parts[a] as f64;
        let fb = exact[b] - parts[b] as f64;
        fb.total_cmp(&fa).then(a.cmp(&b))
    });
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    parts.iter_mut().for_each(|p| *p += min);
    parts
}

/// Error diffusion: visits items in `order` and marks eligible ones so that the marked
/// share of weight tracks `target` (the final error is at most half the heaviest item).
fn diffuse(
    order: &[usize],
    weight: &[f64],
    eligible: impl Fn(usize) -> bool,
    target: f64,
) -> Vec<bool> {
    let mut marked = vec![false; weight.len()];
    let (mut seen, mut hit) = (0.0, 0.0);
    for &i in order {
        let w = weight[i];
        if eligible(i) && hit + w / 2.0 < target * (seen + w) {
            marked[i] = true;
            hit += w;
        }
        seen += w;
    }
    marked
}

/// Indices `0..n` in an order fixed by `(seed, salt)`.
fn hashed_order(n: usize, seed: u64, salt: u64) -> Vec<usize> {
    let mut keyed: Vec<(u64, usize)> = (0..n).map(|i| (hash(&[seed, salt, i as u64]), i)).collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// A standard-normal-ish draw (Irwin-Hall with 4 terms, rescaled): no transcendental math.
fn gaussish(rng: &mut Rng) -> f64 {
    let s = rng.f64() + rng.f64() + rng.f64() + rng.f64();
    (s - 2.0) * 1.732_050_807_568_877_2 // sqrt(12/4)
}

fn harmonic_weights(n: usize) -> Vec<f64> {
    (0..n).map(|r| 1.0 / (r as f64 + 1.0)).collect()
}

impl Catalog {
    /// Builds the catalog of `categories` categories, `brands` brands and `products`
    /// products (`1 <= categories <= products`, `brands >= 1`).
    pub(crate) fn build(seed: u64, categories: u32, brands: u32, products: u64) -> Catalog {
        let mut rng = Rng::new(hash(&[seed, tag::CATALOG]));
        let n_cat = categories as usize;

        // Top levels: Zipf; categories per top level in proportion to its taxonomy size.
        let tops = profile::TAXONOMY.len().min(n_cat);
        let top_w = harmonic_weights(tops);
        let top_sum: f64 = top_w.iter().sum();
        let sizes: Vec<f64> = profile::TAXONOMY[..tops]
            .iter()
            .map(|(_, c)| c.len() as f64)
            .collect();
        let per_top = apportion(n_cat as u64, &sizes, 1);

        let mut cats: Vec<Category> = Vec::with_capacity(n_cat);
        let mut rank_in_top: Vec<usize> = Vec::with_capacity(n_cat);
        for (t, &m) in per_top.iter().enumerate() {
            let w = harmonic_weights(m as usize);
            let ws: f64 = w.iter().sum();
            for (r, wr) in w.iter().enumerate() {
                let c = cats.len() as u64;
                let jitter = hash(&[seed, tag::CATEGORY_ID, c]) % 1_000_000_000;
                cats.push(Category {
                    id: profile::CATEGORY_ID_BASE + c * 2_147_483_648 + jitter,
                    code: None,
                    top: t as u16,
                    weight: top_w[t] / top_sum * wr / ws,
                    first_product: 0,
                    products: 0,
                });
                rank_in_top.push(r);
            }
        }

        // Codes: about a third of rows in code-less categories (never a top level's first).
        let cat_w: Vec<f64> = cats.iter().map(|c| c.weight).collect();
        // Diffusing in order of decreasing weight keeps every prefix at a third of its
        // weight, and neighbours have similar weights, so about a third of the *ids* are
        // code-less too (a random order would favour many small categories).
        let mut order = hashed_order(n_cat, seed, tag::CATEGORY_NULL);
        order.sort_by(|&a, &b| cat_w[b].total_cmp(&cat_w[a]));
        let no_code = diffuse(
            &order,
            &cat_w,
            |i| rank_in_top[i] > 0,
            profile::CATEGORY_CODE_NULL_SHARE,
        );
        let mut coded_in_top = vec![0usize; tops];
        for (i, c) in cats.iter_mut().enumerate() {
            if !no_code[i] {
                let codes = profile::TAXONOMY[c.top as usize].1;
                let j = coded_in_top[c.top as usize];
                coded_in_top[c.top as usize] += 1;
                // Popular categories get the first codes; when there are more categories
                // than codes, codes repeat under several ids (as in REES46).
                c.code = Some(CompactString::const_new(codes[j % codes.len()]));
            }
        }

        // Products per category ∝ sqrt(weight): popular categories have more products.
        let sqrt_w: Vec<f64> = cat_w.iter().map(|w| w.sqrt()).collect();
        let per_cat = apportion(products, &sqrt_w, 1);

        // Brands: the known ones first, then generated names, all distinct; each has a
        // home top level. Per top level, its brands by global popularity rank.
        let (brands, homes) = make_brands(&mut rng, brands as usize, tops);
        let brand_cdf = Cdf::new(&harmonic_weights(brands.len()));
        let mut top_brands: Vec<Vec<u32>> = vec![Vec::new(); tops];
        for (b, &h) in homes.iter().enumerate() {
            top_brands[h as usize].push(b as u32);
        }
        let top_brand_cdf: Vec<Cdf> = top_brands
            .iter()
            .map(|l| Cdf::new(&harmonic_weights(l.len())))
            .collect();
        let in_top = Prob::new(profile::BRAND_IN_TOP);

        let mut prods: Vec<Product> = Vec::with_capacity(products as usize);
        let mut weight: Vec<f64> = Vec::with_capacity(products as usize);
        let mut product_thresholds: Vec<u32> = Vec::with_capacity(products as usize);
        let mut level: Vec<f64> = Vec::with_capacity(n_cat);
        for (ci, c) in cats.iter_mut().enumerate() {
            let n = per_cat[ci] as usize;
            c.first_product = prods.len() as u32;
            c.products = n as u32;
            let w = harmonic_weights(n);
            let ws: f64 = w.iter().sum();
            push_thresholds(&w, &mut product_thresholds);
            // A pool of brands for this category, drawn by global brand popularity.
            let pool_size = (2 + n / 8).min(40).min(brands.len());
            let mut pool: Vec<u32> = Vec::with_capacity(pool_size);
            let mut tries = 0;
            while pool.len() < pool_size && tries < pool_size * 20 {
                let own = &top_brands[c.top as usize];
                let b = if !own.is_empty() && rng.hit(in_top) {
                    own[top_brand_cdf[c.top as usize].sample(&mut rng)]
                } else {
                    brand_cdf.sample(&mut rng) as u32
                };
                if !pool.contains(&b) {
                    pool.push(b);
                }
                tries += 1;
            }
            // Popularity within the category: its top level's own brands first, each group
            // by global rank (so smartphones are mostly samsung and apple, and a foreign
            // big brand stays a minor one there).
            pool.sort_by_key(|&b| (homes[b as usize] as usize != c.top as usize, b));
            let pool_cdf = Cdf::new(&harmonic_weights(pool.len()));
            for wr in &w {
                prods.push(Product {
                    id: 0,
                    category: ci as u32,
                    brand: pool[pool_cdf.sample(&mut rng)],
                    price_cents: 0,
                });
                weight.push(c.weight * wr / ws);
            }
            level.push(gaussish(&mut rng) * 1.2);
        }

        // Prices: order by latent score, price at the row-weighted quantile.
        let score: Vec<f64> = prods
            .iter()
            .map(|p| level[p.category as usize] + 0.8 * gaussish(&mut rng))
            .collect();
        let mut by_score: Vec<usize> = (0..prods.len()).collect();
        by_score.sort_by(|&a, &b| score[a].total_cmp(&score[b]).then(a.cmp(&b)));
        let total: f64 = weight.iter().sum();
        let mut cum = 0.0;
        for &i in &by_score {
            let u = (cum + weight[i] / 2.0) / total;
            cum += weight[i];
            prods[i].price_cents = (profile::price_at(u) * 100.0).round() as i64;
        }
        let order = hashed_order(prods.len(), seed, tag::PRICE_ZERO);
        let zero = diffuse(
            &order,
            &weight,
            |i| weight[i] < 2e-4 * total,
            profile::ZERO_PRICE_SHARE,
        );
        // Brands: about 15% of rows without one.
        let order = hashed_order(prods.len(), seed, tag::BRAND_NULL);
        let no_brand = diffuse(&order, &weight, |_| true, profile::BRAND_NULL_SHARE);
        for (i, p) in prods.iter_mut().enumerate() {
            if zero[i] {
                p.price_cents = 0;
            }
            if no_brand[i] {
                p.brand = NO_BRAND;
            }
        }

        // Product ids: a shuffled range, so popularity is not visible in the id.
        let mut ids: Vec<u64> = (0..products)
            .map(|i| profile::PRODUCT_ID_BASE + i)
            .collect();
        for i in (1..ids.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            ids.swap(i, j);
        }
        for (p, id) in prods.iter_mut().zip(ids) {
            p.id = id;
        }

        let category_cdf = Cdf::new(&cat_w);
        Catalog {
            categories: cats,
            products: prods,
            brands,
            product_weight: weight,
            category_cdf,
            product_thresholds,
        }
    }

    /// A category drawn by popularity.
    #[inline]
    pub(crate) fn sample_category(&self, rng: &mut Rng) -> u32 {
        self.category_cdf.sample(rng) as u32
    }

    /// A product of category `c`, drawn by popularity within it.
    #[inline]
    pub(crate) fn sample_product_in(&self, c: u32, rng: &mut Rng) -> u32 {
        let cat = &self.categories[c as usize];
        let start = cat.first_product as usize;
        let t = &self.product_thresholds[start..start + cat.products as usize];
        (start + sample_thresholds(t, rng.u32())) as u32
    }

    /// A product drawn by global popularity.
    pub(crate) fn sample_product(&self, rng: &mut Rng) -> u32 {
        let c = self.sample_category(rng);
        self.sample_product_in(c, rng)
    }
}

/// `n` distinct brand names and their home top levels (`< tops`).
fn make_brands(rng: &mut Rng, n: usize, tops: usize) -> (Vec<CompactString>, Vec<u8>) {
    let mut seen: HashSet<CompactString> = HashSet::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    let mut homes = Vec::with_capacity(n);
    for &(b, home) in profile::KNOWN_BRANDS.iter().take(n) {
        let b = CompactString::const_new(b);
        seen.insert(b.clone());
        names.push(b);
        homes.push(if usize::from(home) < tops {
            home
        } else {
            rng.index(tops) as u8
        });
    }
    let syl = profile::BRAND_SYLLABLES;
    while names.len() < n {
        let k = 2 + rng.index(2);
        let mut name = CompactString::default();
        for _ in 0..k {
            name.push_str(syl[rng.index(syl.len())]);
        }
        if seen.contains(&name) {
            // Disambiguate with a digit suffix, as real catalogs do ("tekra2").
            let suffix = (mix64(names.len() as u64) % 9) + 1;
            name.push_str(&suffix.to_string());
            if seen.contains(&name) {
                continue;
            }
        }
        seen.insert(name.clone());
        names.push(name);
        homes.push(rng.index(tops) as u8);
    }
    (names, homes)
}

/// Derived-data checks used by the tests: the expected row shares the catalog aims at.
#[cfg(test)]
pub(crate) fn expected_shares(c: &Catalog) -> (f64, f64, f64) {
    let mut code_null = 0.0;
    let mut brand_null = 0.0;
    let mut zero = 0.0;
    for (i, p) in c.products.iter().enumerate() {
        let w = c.product_weight[i];
        if c.categories[p.category as usize].code.is_none() {
            code_null += w;
        }
        if p.brand == NO_BRAND {
            brand_null += w;
        }
        if p.price_cents <= 0 {
            zero += w;
        }
    }
    (code_null, brand_null, zero)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apportion_is_exact_and_respects_the_minimum() {
        let p = apportion(10, &[1.0, 1.0, 1.0], 1);
        assert_eq!(p.iter().sum::<u64>(), 10);
        assert!(p.iter().all(|&x| x >= 3));
        let p = apportion(600, &[14.0, 27.0, 0.5], 1);
        assert_eq!(p.iter().sum::<u64>(), 600);
        assert!(p[2] >= 1);
    }

    #[test]
    fn default_catalog_is_calibrated_and_well_formed() {
        let c = Catalog::build(42, 600, 2000, 50_000);
        assert_eq!(c.categories.len(), 600);
        assert_eq!(c.products.len(), 50_000);
        assert_eq!(c.brands.len(), 2000);
        let ids: HashSet<u64> = c.categories.iter().map(|c| c.id).collect();
        assert_eq!(ids.len(), 600);
        assert!(c.categories.iter().all(|c| c.id > 1 << 53));
        let pids: HashSet<u64> = c.products.iter().map(|p| p.id).collect();
        assert_eq!(pids.len(), 50_000);
        let brands: HashSet<&CompactString> = c.brands.iter().collect();
        assert_eq!(brands.len(), 2000);
        assert!(
            c.brands.iter().all(|b| !b.is_heap_allocated()),
            "brands must stay inline"
        );
        let no_code = c.categories.iter().filter(|c| c.code.is_none()).count();
        assert!(
            (150..=260).contains(&no_code),
            "{no_code} code-less categories"
        );
        let (code_null, brand_null, zero) = expected_shares(&c);
        assert!((code_null - 1.0 / 3.0).abs() < 0.02, "{code_null}");
        assert!((brand_null - 0.15).abs() < 0.01, "{brand_null}");
        assert!((zero - 0.003).abs() < 0.001, "{zero}");
    }

    #[test]
    fn tiny_catalogs_work() {
        let c = Catalog::build(1, 1, 1, 1);
        assert_eq!(c.products.len(), 1);
        let mut r = Rng::new(1);
        assert_eq!(c.sample_product(&mut r), 0);
        let c = Catalog::build(1, 20, 3, 25);
        assert_eq!(c.categories.len(), 20);
        assert!(c.categories.iter().all(|c| c.products >= 1));
    }
}
