"""Sensors of the fleet service device and of each vehicle (docs/entities.md)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from homeassistant.components.sensor import (
    SensorDeviceClass,
    SensorEntity,
    SensorEntityDescription,
    SensorStateClass,
)
from homeassistant.const import (
    PERCENTAGE,
    EntityCategory,
    UnitOfEnergy,
    UnitOfMass,
    UnitOfPower,
    UnitOfTime,
)
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from homeassistant.helpers.typing import StateType

from .const import (
    CONF_EMISSION_FACTOR,
    CONF_PREDICTION,
    DEFAULT_EMISSION_FACTOR,
    DEFAULT_PREDICTION,
    PREDICTION_OFF,
)
from .coordinator import V2GConfigEntry
from .display import displayed_value
from .engine.snapshot import FleetSnapshot, VehicleSnapshot
from .entity import V2GFleetEntity, V2GVehicleEntity, async_add_vehicle_entities

PARALLEL_UPDATES = 0

DISPATCH_STATUSES = ["completed", "partial", "failed", "planned", "interrupted"]


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else round(fraction * 100.0, 2)


def _last_failure_count(data: FleetSnapshot) -> int | None:
    recent = data.recent_dispatches
    return int(recent[0]["failure_count"]) if recent else None


def _failure_attributes(data: FleetSnapshot) -> dict[str, Any] | None:
    """The last dispatch's failed vehicles, and the last dispatches with theirs."""
    if not (recent := data.recent_dispatches):
        return None
    return {
        "dispatch_id": recent[0].get("dispatch_id"),
        "failures": recent[0].get("failures", []),
        "dispatches": list(recent),
    }


@dataclass(frozen=True, kw_only=True)
class V2GFleetSensorDescription(SensorEntityDescription):
    """A sensor of the fleet device."""

    value_fn: Callable[[FleetSnapshot], StateType | datetime]
    attributes_fn: Callable[[FleetSnapshot], dict[str, Any] | None] = lambda data: None


@dataclass(frozen=True, kw_only=True)
class V2GVehicleSensorDescription(SensorEntityDescription):
    """A sensor of a vehicle device."""

    value_fn: Callable[[VehicleSnapshot], StateType]
    exists_fn: Callable[[Mapping[str, Any]], bool] = lambda options: True
    attributes_fn: Callable[[VehicleSnapshot], dict[str, Any] | None] = (
        lambda vehicle: None
    )


FLEET_SENSORS: tuple[V2GFleetSensorDescription, ...] = (
    V2GFleetSensorDescription(
        key="vehicles_available",
        translation_key="vehicles_available",
        state_class=SensorStateClass.MEASUREMENT,
        value_fn=lambda data: data.vehicles_available,
    ),
    V2GFleetSensorDescription(
        key="flexibility_up",
        translation_key="flexibility_up",
        device_class=SensorDeviceClass.POWER,
        state_class=SensorStateClass.MEASUREMENT,
        native_unit_of_measurement=UnitOfPower.KILO_WATT,
        suggested_display_precision=1,
        value_fn=lambda data: round(data.flexibility_up_kw, 3),
    ),
    V2GFleetSensorDescription(
        key="flexibility_down",
        translation_key="flexibility_down",
        device_class=SensorDeviceClass.POWER,
        state_class=SensorStateClass.MEASUREMENT,
        native_unit_of_measurement=UnitOfPower.KILO_WATT,
        suggested_display_precision=1,
        value_fn=lambda data: round(data.flexibility_down_kw, 3),
    ),
    V2GFleetSensorDescription(
        key="last_ack_rate",
        translation_key="last_ack_rate",
        state_class=SensorStateClass.MEASUREMENT,
        native_unit_of_measurement=PERCENTAGE,
        suggested_display_precision=0,
        value_fn=lambda data: _percent(data.last_ack_rate),
    ),
    V2GFleetSensorDescription(
        key="ack_rate_24h",
        translation_key="ack_rate_24h",
        state_class=SensorStateClass.MEASUREMENT,
        native_unit_of_measurement=PERCENTAGE,
        suggested_display_precision=0,
        value_fn=lambda data: _percent(data.ack_rate_24h),
    ),
    V2GFleetSensorDescription(
        key="last_dispatch",
        translation_key="last_dispatch",
        device_class=SensorDeviceClass.TIMESTAMP,
        value_fn=lambda data: data.last_dispatch_at,
    ),
    V2GFleetSensorDescription(
        key="last_dispatch_status",
        translation_key="last_dispatch_status",
        device_class=SensorDeviceClass.ENUM,
        options=DISPATCH_STATUSES,
        value_fn=lambda data: data.last_status,
    ),
    V2GFleetSensorDescription(
        key="last_requested_power",
        translation_key="last_requested_power",
        device_class=SensorDeviceClass.POWER,
        state_class=SensorStateClass.MEASUREMENT,
        native_unit_of_measurement=UnitOfPower.KILO_WATT,
        suggested_display_precision=1,
        value_fn=lambda data: data.last_requested_kw,
    ),
    V2GFleetSensorDescription(
        key="last_acknowledged_power",
        translation_key="last_acknowledged_power",
        device_class=SensorDeviceClass.POWER,
        state_class=SensorStateClass.MEASUREMENT,
        native_unit_of_measurement=UnitOfPower.KILO_WATT,
        suggested_display_precision=1,
        value_fn=lambda data: data.last_acknowledged_kw,
    ),
    V2GFleetSensorDescription(
        key="last_dispatch_failures",
        translation_key="last_dispatch_failures",
        state_class=SensorStateClass.MEASUREMENT,
        value_fn=_last_failure_count,
        attributes_fn=_failure_attributes,
    ),
    V2GFleetSensorDescription(
        key="dispatches",
        translation_key="dispatches",
        state_class=SensorStateClass.TOTAL_INCREASING,
        value_fn=lambda data: data.dispatches,
    ),
    V2GFleetSensorDescription(
        key="orders_sent",
        translation_key="orders_sent",
        state_class=SensorStateClass.TOTAL_INCREASING,
        value_fn=lambda data: data.orders_sent,
    ),
    V2GFleetSensorDescription(
        key="orders_acknowledged",
        translation_key="orders_acknowledged",
        state_class=SensorStateClass.TOTAL_INCREASING,
        value_fn=lambda data: data.orders_acknowledged,
    ),
    V2GFleetSensorDescription(
        key="publish_failures",
        translation_key="publish_failures",
        state_class=SensorStateClass.TOTAL_INCREASING,
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=lambda data: data.publish_failures,
    ),
    V2GFleetSensorDescription(
        key="ack_latency_p95",
        translation_key="ack_latency_p95",
        device_class=SensorDeviceClass.DURATION,
        state_class=SensorStateClass.MEASUREMENT,
        native_unit_of_measurement=UnitOfTime.MILLISECONDS,
        suggested_display_precision=0,
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=lambda data: data.ack_latency_p95_ms,
    ),
    V2GFleetSensorDescription(
        key="delivered_power",
        translation_key="delivered_power",
        device_class=SensorDeviceClass.POWER,
        state_class=SensorStateClass.MEASUREMENT,
        native_unit_of_measurement=UnitOfPower.KILO_WATT,
        suggested_display_precision=1,
        value_fn=lambda data: data.last_delivered_kw,
    ),
    V2GFleetSensorDescription(
        key="delivery_ratio_24h",
        translation_key="delivery_ratio_24h",
        state_class=SensorStateClass.MEASUREMENT,
        native_unit_of_measurement=PERCENTAGE,
        suggested_display_precision=0,
        value_fn=lambda data: _percent(data.delivery_ratio_24h),
    ),
)


def _emission_factor_set(options: Mapping[str, Any]) -> bool:
    return bool(float(options.get(CONF_EMISSION_FACTOR, DEFAULT_EMISSION_FACTOR)) > 0)


def _prediction_on(options: Mapping[str, Any]) -> bool:
    return bool(options.get(CONF_PREDICTION, DEFAULT_PREDICTION) != PREDICTION_OFF)


def _learned_limits(vehicle: VehicleSnapshot) -> dict[str, Any] | None:
    """The limits learned from what the vehicle really does (only those learned)."""
    learned = {
        "learned_charge_kw": vehicle.learned_charge_kw,
        "learned_discharge_kw": vehicle.learned_discharge_kw,
    }
    return {key: kw for key, kw in learned.items() if kw is not None} or None


VEHICLE_SENSORS: tuple[V2GVehicleSensorDescription, ...] = (
    V2GVehicleSensorDescription(
        key="state_of_charge",
        translation_key="state_of_charge",
        device_class=SensorDeviceClass.BATTERY,
        state_class=SensorStateClass.MEASUREMENT,
        native_unit_of_measurement=PERCENTAGE,
        suggested_display_precision=0,
        value_fn=lambda vehicle: _percent(vehicle.soc),
    ),
    V2GVehicleSensorDescription(
        key="setpoint",
        translation_key="setpoint",
        device_class=SensorDeviceClass.POWER,
        state_class=SensorStateClass.MEASUREMENT,
        native_unit_of_measurement=UnitOfPower.KILO_WATT,
        suggested_display_precision=1,
        value_fn=lambda vehicle: vehicle.setpoint_kw,
        attributes_fn=_learned_limits,
    ),
    V2GVehicleSensorDescription(
        key="measured_power",
        translation_key="measured_power",
        device_class=SensorDeviceClass.POWER,
        state_class=SensorStateClass.MEASUREMENT,
        native_unit_of_measurement=UnitOfPower.KILO_WATT,
        suggested_display_precision=1,
        value_fn=lambda vehicle: vehicle.measured_power_kw,
    ),
    V2GVehicleSensorDescription(
        key="ack_rate",
        translation_key="ack_rate",
        state_class=SensorStateClass.MEASUREMENT,
        native_unit_of_measurement=PERCENTAGE,
        suggested_display_precision=0,
        value_fn=lambda vehicle: _percent(vehicle.ack_rate),
    ),
    V2GVehicleSensorDescription(
        key="last_ack_latency",
        translation_key="last_ack_latency",
        device_class=SensorDeviceClass.DURATION,
        state_class=SensorStateClass.MEASUREMENT,
        native_unit_of_measurement=UnitOfTime.MILLISECONDS,
        suggested_display_precision=0,
        entity_category=EntityCategory.DIAGNOSTIC,
        # Changes with every dispatch for every vehicle: on a depot that is one
        # state (and one recorder row) per vehicle per dispatch. Fleet p95 stays on.
        entity_registry_enabled_default=False,
        value_fn=lambda vehicle: vehicle.last_ack_latency_ms,
    ),
    V2GVehicleSensorDescription(
        key="energy_discharged",
        translation_key="energy_discharged",
        device_class=SensorDeviceClass.ENERGY,
        state_class=SensorStateClass.TOTAL_INCREASING,
        native_unit_of_measurement=UnitOfEnergy.KILO_WATT_HOUR,
        suggested_display_precision=2,
        value_fn=lambda vehicle: round(vehicle.energy_discharged_kwh, 6),
    ),
    V2GVehicleSensorDescription(
        key="energy_charged",
        translation_key="energy_charged",
        device_class=SensorDeviceClass.ENERGY,
        state_class=SensorStateClass.TOTAL_INCREASING,
        native_unit_of_measurement=UnitOfEnergy.KILO_WATT_HOUR,
        suggested_display_precision=2,
        value_fn=lambda vehicle: round(vehicle.energy_charged_kwh, 6),
    ),
    V2GVehicleSensorDescription(
        key="co2_avoided",
        translation_key="co2_avoided",
        device_class=SensorDeviceClass.WEIGHT,
        state_class=SensorStateClass.TOTAL_INCREASING,
        native_unit_of_measurement=UnitOfMass.GRAMS,
        suggested_display_precision=0,
        value_fn=lambda vehicle: round(vehicle.co2_avoided_g, 3),
        exists_fn=_emission_factor_set,
    ),
    V2GVehicleSensorDescription(
        key="availability_forecast",
        translation_key="availability_forecast",
        state_class=SensorStateClass.MEASUREMENT,
        native_unit_of_measurement=PERCENTAGE,
        suggested_display_precision=0,
        value_fn=lambda vehicle: _percent(vehicle.availability_forecast),
        exists_fn=_prediction_on,
    ),
)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: V2GConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    """Add the fleet sensors and the sensors of every (new) vehicle."""
    coordinator = entry.runtime_data
    async_add_entities(
        V2GFleetSensor(coordinator, description) for description in FLEET_SENSORS
    )
    descriptions = [d for d in VEHICLE_SENSORS if d.exists_fn(coordinator.options)]
    async_add_vehicle_entities(
        entry,
        async_add_entities,
        lambda vehicle_id: [
            V2GVehicleSensor(coordinator, description, vehicle_id)
            for description in descriptions
        ],
    )


class V2GFleetSensor(V2GFleetEntity, SensorEntity):
    """A fleet sensor."""

    entity_description: V2GFleetSensorDescription
    # The dispatch log keeps them: the recorder need not keep a copy per dispatch.
    _unrecorded_attributes = frozenset({"failures", "dispatches"})

    @property
    def native_value(self) -> StateType | datetime:
        """Return the value from the latest fleet snapshot."""
        return self.entity_description.value_fn(self.coordinator.data)

    @property
    def extra_state_attributes(self) -> dict[str, Any] | None:
        """Return what the description adds (the last dispatches' failures)."""
        return self.entity_description.attributes_fn(self.coordinator.data)

    def _rendered_state(self) -> Any:
        return displayed_value(self, self.native_value)


class V2GVehicleSensor(V2GVehicleEntity, SensorEntity):
    """A vehicle sensor."""

    entity_description: V2GVehicleSensorDescription

    @property
    def native_value(self) -> StateType:
        """Return the value from the vehicle's latest snapshot."""
        vehicle = self.vehicle
        return None if vehicle is None else self.entity_description.value_fn(vehicle)

    @property
    def extra_state_attributes(self) -> dict[str, Any] | None:
        """Return what the description adds (the setpoint's learned limits)."""
        vehicle = self.vehicle
        if vehicle is None:
            return None
        return self.entity_description.attributes_fn(vehicle)

    def _rendered_state(self) -> Any:
        return displayed_value(self, self.native_value)
