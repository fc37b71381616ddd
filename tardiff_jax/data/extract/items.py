"""What each channel is made of in each database: item ids, valid ranges, unit conversion.

MIMIC-III and MIMIC-IV chart vital signs in CHARTEVENTS under item ids (CareVue ids below 220000,
MetaVision ids from 220000 on). The ids and the physiological ranges are those of the MIT-LCP
mimic-code concepts, the community's reference extraction of vital signs:
  - MIMIC-III: mimic-code `mimic-iii/concepts/pivot/pivoted_vital.sql` (and `firstday/vitals`),
  - MIMIC-IV:  mimic-code `mimic-iv/concepts/measurement/vitalsign.sql`.
Each id below is also a "ready" row of the MIMIC-III benchmark's variable map (Harutyunyan et al.
2019, mimic3-benchmarks `mimic3benchmark/resources/itemid_to_variable_map.csv`). That map lists
more ids: cuff-site BPs (e.g. 3313/8502 "BP Cuff"), IABP means (224, 224322), spontaneous
respiratory rates (614, 224689, ...), temperatures "C (calc)"/"F (calc)" (677, 679) and arterial
blood-gas saturations (834 SaO2, 220227): we keep mimic-code's narrower set, which is what its
widely used first-day vitals report, and leave blood gases out of SpO2 (pulse oximetry).

A value is kept when low < value < high (value <= high for SpO2), tested on the value as charted
(Fahrenheit items against the Fahrenheit range), as mimic-code does; Fahrenheit temperatures are
then converted to Celsius: (F - 32) / 1.8.

eICU's vitalPeriodic has one column per vital sign (5-minute medians from the bedside monitor),
so there a channel is a column; the same ranges apply.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Channels in the order of the embedded simulator (tardiff_jax/data/simulator.py).
MIMIC_CHANNELS = ("HR", "SBP", "DBP", "MAP", "RR", "Temp", "SpO2")
MIMIC_UNITS = ("bpm", "mmHg", "mmHg", "mmHg", "/min", "degC", "%")
EICU_CHANNELS = ("HR", "RR", "SpO2")
EICU_UNITS = ("bpm", "/min", "%")


@dataclasses.dataclass(frozen=True)
class Item:
  """One charted item: id, its label in D_ITEMS, source system, channel and valid range."""
  itemid: int
  label: str
  system: str  # "carevue" or "metavision"
  channel: str
  low: float  # Exclusive.
  high: float  # Exclusive unless high_inclusive.
  high_inclusive: bool = False
  fahrenheit: bool = False  # Charted in degrees Fahrenheit: converted to Celsius after the check.


def _items(channel, low, high, ids, high_inclusive=False, fahrenheit=False):
  return tuple(Item(i, label, system, channel, low, high, high_inclusive, fahrenheit)
               for i, label, system in ids)


_CV, _MV = "carevue", "metavision"
_HR = ((211, "Heart Rate", _CV), (220045, "Heart Rate", _MV))
_SBP = ((51, "Arterial BP [Systolic]", _CV), (442, "Manual BP [Systolic]", _CV),
        (455, "NBP [Systolic]", _CV), (6701, "Arterial BP #2 [Systolic]", _CV),
        (220179, "Non Invasive Blood Pressure systolic", _MV),
        (220050, "Arterial Blood Pressure systolic", _MV))
_DBP = ((8368, "Arterial BP [Diastolic]", _CV), (8440, "Manual BP [Diastolic]", _CV),
        (8441, "NBP [Diastolic]", _CV), (8555, "Arterial BP #2 [Diastolic]", _CV),
        (220180, "Non Invasive Blood Pressure diastolic", _MV),
        (220051, "Arterial Blood Pressure diastolic", _MV))
_MAP = ((456, "NBP Mean", _CV), (52, "Arterial BP Mean", _CV), (6702, "Arterial BP Mean #2", _CV),
        (443, "Manual BP Mean(calc)", _CV), (220052, "Arterial Blood Pressure mean", _MV),
        (220181, "Non Invasive Blood Pressure mean", _MV), (225312, "ART BP mean", _MV))
_RR = ((615, "Resp Rate (Total)", _CV), (618, "Respiratory Rate", _CV),
       (220210, "Respiratory Rate", _MV), (224690, "Respiratory Rate (Total)", _MV))
_TEMP_F = ((678, "Temperature F", _CV), (223761, "Temperature Fahrenheit", _MV))
_TEMP_C = ((676, "Temperature C", _CV), (223762, "Temperature Celsius", _MV))
_SPO2 = ((646, "SpO2", _CV), (220277, "O2 saturation pulseoxymetry", _MV))
# MIMIC-IV adds MetaVision's "ART BP" systolic/diastolic (its mean, 225312, is already above).
_SBP_IV = ((225309, "ART BP Systolic", _MV),)
_DBP_IV = ((225310, "ART BP Diastolic", _MV),)

MIMIC3_ITEMS: tuple[Item, ...] = (
    _items("HR", 0, 300, _HR) + _items("SBP", 0, 400, _SBP) + _items("DBP", 0, 300, _DBP)
    + _items("MAP", 0, 300, _MAP) + _items("RR", 0, 70, _RR)
    + _items("Temp", 70, 120, _TEMP_F, fahrenheit=True) + _items("Temp", 10, 50, _TEMP_C)
    + _items("SpO2", 0, 100, _SPO2, high_inclusive=True))


# MIMIC-IV kept MetaVision only: its ids, plus the two "ART BP" items.
MIMIC4_ITEMS: tuple[Item, ...] = (
    tuple(i for i in MIMIC3_ITEMS if i.system == _MV)
    + _items("SBP", 0, 400, _SBP_IV) + _items("DBP", 0, 300, _DBP_IV))

# eICU vitalPeriodic column -> (channel, low, high, high_inclusive); same limits as above.
EICU_COLUMNS = {"heartrate": ("HR", 0.0, 300.0, False), "respiration": ("RR", 0.0, 70.0, False),
                "sao2": ("SpO2", 0.0, 100.0, True)}


def fahrenheit_to_celsius(f: np.ndarray) -> np.ndarray:
  return (np.asarray(f, np.float64) - 32.0) / 1.8


def in_range(v: np.ndarray, low, high, high_inclusive) -> np.ndarray:
  """bool: low < v < high (v <= high where high_inclusive); NaN is never in range."""
  upper = np.where(high_inclusive, v <= high, v < high)
  return (v > low) & upper


class ItemTable:
  """Vectorised item lookup: item ids and raw values -> channel index, value in channel units,
  and whether the value passed its range filter."""

  def __init__(self, items: tuple[Item, ...], channels: tuple[str, ...]):
    ids = np.array([i.itemid for i in items], np.int64)
    if len(set(ids.tolist())) != len(ids):
      raise ValueError("duplicate item ids in the item table.")
    self.items, self.channels = items, channels
    size = int(ids.max()) + 1
    self._channel = np.full(size, -1, np.int8)
    self._low = np.zeros(size)
    self._high = np.zeros(size)
    self._incl = np.zeros(size, bool)
    self._fahr = np.zeros(size, bool)
    for it in items:
      self._channel[it.itemid] = channels.index(it.channel)
      self._low[it.itemid], self._high[it.itemid] = it.low, it.high
      self._incl[it.itemid], self._fahr[it.itemid] = it.high_inclusive, it.fahrenheit

  def channel_of(self, itemid: np.ndarray) -> np.ndarray:
    """int8 channel index per row, -1 for items that are not wanted."""
    itemid = np.asarray(itemid, np.int64)
    ok = (itemid >= 0) & (itemid < self._channel.size)
    out = np.full(itemid.shape, -1, np.int8)
    out[ok] = self._channel[itemid[ok]]
    return out

  def convert(self, itemid: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(value in channel units, passed range filter) for rows whose items are wanted."""
    value = np.asarray(value, np.float64)
    ok = in_range(value, self._low[itemid], self._high[itemid], self._incl[itemid])
    fahr = self._fahr[itemid]
    value = np.where(fahr, fahrenheit_to_celsius(value), value)
    return value, ok
