//! [`Order`]: the order in which a flow block reads its patches.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The order in which a flow block reads the grid of patches (before the odd blocks' reversal).
///
/// Any order is a permutation of the tokens, so the likelihood stays exact; what changes is
/// which patches each prediction sees. Raster order alone draws horizontal streaks; a
/// column-major block in between lets every row condition on the rows below and above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Row by row, left to right (the reference's only order).
    Raster,
    /// Column by column, top to bottom: the transpose of raster order.
    Column,
}

impl Order {
    /// The name used in model files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Raster => "raster",
            Self::Column => "column",
        }
    }

    /// Parse a comma-separated list such as `raster,column`.
    pub fn parse_list(s: &str) -> Result<Vec<Order>> {
        s.split(',')
            .map(|w| match w.trim() {
                "raster" => Ok(Self::Raster),
                "column" => Ok(Self::Column),
                other => Err(Error::InvalidInput(format!(
                    "unknown patch order `{other}` (expected raster or column, comma-separated)"
                ))),
            })
            .collect()
    }

    /// `raster,column` for a list.
    pub fn show_list(orders: &[Order]) -> String {
        if orders.is_empty() {
            return Self::Raster.name().into();
        }
        orders
            .iter()
            .map(|o| o.name())
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    fn small() -> ModelConfig {
        ModelConfig::new(3, 8, 2, 128, 2, 2)
    }

    #[test]
    fn orders_parse_show_and_default_to_the_reference() {
        assert_eq!(
            Order::parse_list("raster, column").unwrap(),
            vec![Order::Raster, Order::Column]
        );
        assert!(
            Order::parse_list("diagonal")
                .unwrap_err()
                .to_string()
                .contains("diagonal")
        );
        assert_eq!(Order::show_list(&[]), "raster");
        let c = small().with_orders(vec![Order::Column, Order::Raster]);
        assert_eq!(c.order_of_block(0), Order::Column);
        assert_eq!(c.order_of_block(3), Order::Raster);
        assert!(!c.reference_orders());
        assert!(small().reference_orders());
        let json = serde_json::to_string(&c).unwrap();
        assert!(
            json.contains("\"orders\":[\"column\",\"raster\"]"),
            "{json}"
        );
        assert!(!serde_json::to_string(&small()).unwrap().contains("orders"));
    }
}
