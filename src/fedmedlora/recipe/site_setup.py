"""One site's local recipe from the run's recipe: its documents (a configured site, or a
site config file of its own as a SuperNode gets) and its own settings (LoRA rank, keep
folder). Shared by the Flower client and the site-side CLI commands."""

from __future__ import annotations

from fedmedlora.data.schema import load_schema
from fedmedlora.data.site_check import check_site_config
from fedmedlora.data.sites import load_site, load_source
from fedmedlora.errors import ConfigError
from fedmedlora.recipe.settings import Recipe
from fedmedlora.recipe.site_recipe import SiteRecipe


def site_recipe(recipe: Recipe, site_name: str = "", site_config: str = "") -> SiteRecipe:
    """`site_config`: a YAML site source file (deployment); else `site_name` from the
    recipe's data (simulation, or a site of the run config)."""
    schema = load_schema(recipe.schema_name)
    if site_config:
        source = check_site_config(site_config, recipe.schema_name)
        return SiteRecipe(
            own_rank(recipe, source.lora_rank),
            load_source(source, schema, recipe.seed),
            keep_dir=source.keep_dir,
        )
    rank = recipe.data.site_ranks().get(site_name)
    source = next((s for s in recipe.data.sites if s.name == site_name), None)
    return SiteRecipe(
        own_rank(recipe, rank),
        load_site(recipe.data, site_name, schema, recipe.seed),
        keep_dir=source.keep_dir if source else None,
    )


def own_rank(recipe: Recipe, rank: int | None) -> Recipe:
    """The recipe with this site's own LoRA rank (what its compute allows)."""
    if rank is None or rank == recipe.lora.rank:
        return recipe
    if rank > recipe.lora.rank:
        raise ConfigError(f"site rank {rank} exceeds the global rank {recipe.lora.rank}")
    return recipe.model_copy(update={"lora": recipe.lora.model_copy(update={"rank": rank})})
