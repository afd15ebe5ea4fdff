-- An alert's reasons as published (one per sensor that pushed the probability up,
-- see appliance.models.explain), so the stored alert is the published one.
ALTER TABLE alerts ADD COLUMN reasons JSON NOT NULL DEFAULT '[]';
